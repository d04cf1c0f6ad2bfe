#!/usr/bin/env bash
# The whole pipeline in one command.
#
#   ./run_imagenet.sh                      # demo: builds a small synthetic ImageNet-layout dataset,
#                                          # shards it, trains, evaluates, exports, serves one image
#   DATA_DIR=/data/imagenet-tfrecords MODEL_DIR=/ckpt/xception ./run_imagenet.sh [imagenet_main flags]
#                                          # the paper's recipe on every visible GPU
#
# Environment (real runs):
#   DATA_DIR     TFRecord shards (train-*-of-*, validation-*-of-*); built first when missing and
#                RAW_DIR is set.
#   MODEL_DIR    checkpoints, TensorBoard summaries, run.log and export/.
#   RAW_DIR      raw ImageNet: train/ (synset folders) or ILSVRC2012_img_train.tar; val/ or
#                ILSVRC2012_img_val.tar with val_labels.txt (one synset per line), or val/ in
#                synset folders (val_labels.txt is then not used); optional
#                imagenet_metadata.txt and bboxes/ or ILSVRC2012_bbox_train_v2.tar.gz.
#   NUM_GPUS     GPUs to use (default: all that `nvidia-smi -L` lists, under Slurm all the task was
#                given; -1 every GPU this task sees; 0 trains on the CPU). Numbers must be digits.
#   WORKER_HOSTS, TASK_INDEX   one worker of a multi-machine job (host:port,host:port and this
#                machine's index; index 0 is the chief); every worker runs the same command.
#   TASK_TYPE=evaluator   with WORKER_HOSTS: this machine evaluates each new checkpoint instead.
#   A TF_CONFIG in the environment (Kubeflow's TFJob sets one) or a Slurm job step of several tasks
#   (srun) describes the cluster instead of WORKER_HOSTS. MODEL_DIR must then be storage that every
#   task sees; only the chief exports and evaluates the export.
# Demo: DEMO_DIR (default ./demo_output) holds everything it makes; re-running resumes.
# Extra arguments go to official.xception.imagenet_main unchanged (they win over the defaults here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source tools/venv.sh

die() {
    echo "error: $*" >&2
    exit 1
}

step() {
    echo
    echo "=== $* ===" >&2
}

has_shards() {
    compgen -G "$1/train-*-of-*" >/dev/null && compgen -G "$1/validation-*-of-*" >/dev/null
}

# Environment values are data: checked against a pattern before any use, never evaluated (bash
# arithmetic would run a value like a[$(cmd)0] as a command).
check_count() {
    local name="$1" value="$2" what="$3"
    [[ "$value" =~ ^[0-9]{1,6}$ ]] || die "$name=$value is not $what (digits, e.g. ${4:-0})"
}

latest_export() {
    ls -1d "$1"/[0-9]* 2>/dev/null | sort -n | tail -n 1
}

count_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

# Writes report.md and report.png (curves, evaluations, provenance) into model directory $1 and
# prints their paths; a run without summaries yet gets a warning, not a failure.
write_report() {
    step "Report of the run in $1"
    python -m official.xception.report --model_dir="$1" \
        || echo "warning: no report written for $1 (see the message above)" >&2
}

# Builds shards in $DATA_DIR from $RAW_DIR, choosing folders or the original archives.
build_shards_from_raw() {
    local raw="$1" out="$2" args=()
    [[ -d "$raw" ]] || die "RAW_DIR=$raw is not a directory"
    if [[ -d "$raw/train" ]]; then
        args+=(--train_directory="$raw/train")
    elif [[ -f "$raw/ILSVRC2012_img_train.tar" ]]; then
        args+=(--train_tar="$raw/ILSVRC2012_img_train.tar")
    else
        die "RAW_DIR=$raw has neither train/ nor ILSVRC2012_img_train.tar"
    fi
    local labels_needed=1
    if [[ -d "$raw/val" ]]; then
        args+=(--validation_directory="$raw/val")
        # Validation images already moved into synset folders (as the established preprocessing
        # script leaves them) carry their labels in the folder names: a label file is not wanted.
        if compgen -G "$raw/val/*/" >/dev/null; then
            labels_needed=0
            if [[ -f "$raw/val_labels.txt" ]]; then
                echo "note: $raw/val is in class folders; $raw/val_labels.txt is not used" >&2
            fi
        fi
    elif [[ -f "$raw/ILSVRC2012_img_val.tar" ]]; then
        args+=(--validation_tar="$raw/ILSVRC2012_img_val.tar")
    else
        die "RAW_DIR=$raw has neither val/ nor ILSVRC2012_img_val.tar"
    fi
    if (( labels_needed )) && [[ -f "$raw/val_labels.txt" ]]; then
        args+=(--validation_labels_file="$raw/val_labels.txt")
    fi
    [[ -f "$raw/imagenet_metadata.txt" ]] && args+=(--imagenet_metadata_file="$raw/imagenet_metadata.txt")
    local boxes=()
    if [[ -d "$raw/bboxes" ]]; then
        boxes=(--bounding_box_dir="$raw/bboxes")
    elif [[ -f "$raw/ILSVRC2012_bbox_train_v2.tar.gz" ]]; then
        boxes=(--bounding_box_tar="$raw/ILSVRC2012_bbox_train_v2.tar.gz")
    fi
    mkdir -p "$out"
    if (( ${#boxes[@]} )); then
        step "Bounding boxes -> $out/bounding_boxes.csv"
        python -m data_prep.process_bounding_boxes "${boxes[@]}" --output_file="$out/bounding_boxes.csv"
        args+=(--bounding_box_file="$out/bounding_boxes.csv")
    fi
    step "Building TFRecord shards in $out"
    python -m data_prep.build_imagenet_data "${args[@]}" --output_directory="$out" ${SHARD_FLAGS:-}
}

run_demo() {
    local demo="${DEMO_DIR:-$PWD/demo_output}"
    local raw="$demo/raw" shards="$demo/shards" model="$demo/model"
    mkdir -p "$demo"
    if [[ ! -f "$raw/val_labels.txt" ]]; then
        step "Generating the demo dataset (5 classes of synthetic shapes, ImageNet layout) in $raw"
        python -m data_prep.make_demo_dataset --output_dir="$raw"
    fi
    # The build resumes: finished shards that match its summary are kept.
    SHARD_FLAGS="--train_shards=8 --validation_shards=2" build_shards_from_raw "$raw" "$shards"

    step "Training Xception at 71x71 on the CPU (a few minutes), evaluating, exporting"
    # Colour is part of what tells the demo's classes apart: no colour distortion here.
    python -m official.xception.imagenet_main --data_dir="$shards" --model_dir="$model" \
        --export_dir="$model/export" --num_gpus=0 --image_size=71 --batch_size=32 \
        --train_epochs=6 --epochs_between_evals=1.5 --base_learning_rate=0.05 --base_batch_size=32 \
        --warmup_epochs=1.5 --learning_rate_schedule=cosine --moving_average_decay=0.99 \
        --dropout_rate=0.0 --batch_norm_momentum=0.9 --nocolor_distortion --shuffle_buffer=1000 \
        --log_steps=10 "$@" 2>&1 | tee -a "$model.log"
    local export
    export="$(latest_export "$model/export")"
    [[ -n "$export" ]] || die "training finished without an export in $model/export (see $model.log)"

    step "Evaluating the SavedModel $export on the validation shards"
    local figures
    figures="$(python -m official.xception.evaluate_saved_model --saved_model_dir="$export" \
        --data_dir="$shards" | tail -n 1)"
    echo "$figures"

    local image
    local images=("$raw"/val/*)
    image="${images[0]}"
    step "Classifying $image through serving_default"
    python -m official.xception.classify_image --saved_model_dir="$export" "$image"
    write_report "$model"

    cat <<EOF

Demo finished.
  raw dataset:      $raw
  TFRecord shards:  $shards (build_summary.json beside them)
  checkpoints:      $model (tensorboard --logdir=$model)
  training log:     $model.log
  SavedModel:       $export
  SavedModel evaluation: $figures (chance is 0.2)
  report:           $model/report.md (curves: $model/report.png)
EOF
}

run_real() {
    [[ -n "${MODEL_DIR:-}" ]] || die "set MODEL_DIR (checkpoints, logs and exports go there) along with DATA_DIR"
    if ! has_shards "$DATA_DIR"; then
        if [[ -n "${RAW_DIR:-}" ]]; then
            build_shards_from_raw "$RAW_DIR" "$DATA_DIR"
        elif [[ -d "$DATA_DIR" ]]; then
            die "DATA_DIR=$DATA_DIR has no train-*-of-* and validation-*-of-* shards; set RAW_DIR=<raw ImageNet> to build them"
        else
            die "DATA_DIR=$DATA_DIR does not exist; point it at the TFRecord shards (or set RAW_DIR to build them there)"
        fi
    fi

    # Each task of a cluster logs to its own file: they share MODEL_DIR.
    local cluster=() role=""
    case "${TASK_TYPE:-worker}" in
        worker|evaluator) ;;
        *) die "TASK_TYPE=$TASK_TYPE must be worker or evaluator" ;;
    esac
    [[ -z "${TASK_INDEX:-}" ]] || check_count TASK_INDEX "$TASK_INDEX" "a task index"
    [[ -z "${SLURM_STEP_NUM_TASKS:-}" ]] || check_count SLURM_STEP_NUM_TASKS "$SLURM_STEP_NUM_TASKS" "a number of tasks" 2
    [[ -z "${SLURM_PROCID:-}" ]] || check_count SLURM_PROCID "$SLURM_PROCID" "a task rank"
    if [[ -n "${WORKER_HOSTS:-}" ]]; then
        cluster=(--distribution_strategy=multi_worker_mirrored --worker_hosts="$WORKER_HOSTS")
        if [[ "${TASK_TYPE:-worker}" == evaluator ]]; then
            cluster+=(--task_type=evaluator)
            role=evaluator
        else
            [[ -n "${TASK_INDEX:-}" ]] || die "WORKER_HOSTS is set: set TASK_INDEX to this machine's index in it too"
            cluster+=(--task_index="$TASK_INDEX")
            role="task$TASK_INDEX"
        fi
    elif [[ -n "${TF_CONFIG:-}" ]]; then
        cluster=(--distribution_strategy=multi_worker_mirrored)
        role="$(python -c 'import json, os; task = json.loads(os.environ["TF_CONFIG"])["task"]; print(task["type"] + str(task.get("index", 0)))' 2>/dev/null)" \
            || die "TF_CONFIG has no task: it must be JSON with \"cluster\" and \"task\" (type and index)"
    elif [[ "${SLURM_STEP_NUM_TASKS:-1}" -gt 1 && -n "${SLURM_PROCID:-}" ]]; then
        cluster=(--distribution_strategy=multi_worker_mirrored --slurm_cluster)
        role="task$SLURM_PROCID"
    fi
    [[ "${TASK_TYPE:-worker}" == worker || "$role" == evaluator ]] \
        || die "TASK_TYPE=evaluator needs WORKER_HOSTS (the training tasks, chief first); with TF_CONFIG the task type comes from there"

    local found
    found="$(count_gpus)"
    local gpus="${NUM_GPUS:-$found}"
    # -1: every GPU this task sees (as imagenet_main's --num_gpus documents).
    [[ "$gpus" =~ ^(-1|[0-9]{1,4})$ ]] || die "NUM_GPUS=$gpus is not a number of GPUs (digits, or -1 for every GPU this task sees)"
    # An evaluator's NUM_GPUS is each training task's (it sets the batch); it evaluates on one device.
    if (( gpus > found )) && [[ "$role" != evaluator* ]]; then
        die "NUM_GPUS=$gpus requested but nvidia-smi -L lists $found GPU(s) on $(hostname); check the driver and CUDA_VISIBLE_DEVICES, or set NUM_GPUS=0 to train on the CPU"
    fi
    (( gpus != 0 )) || echo "warning: no GPUs found; training on the CPU will be very slow" >&2
    # Under Slurm each task uses every GPU Slurm gave it (its own CUDA_VISIBLE_DEVICES).
    [[ " ${cluster[*]} " != *" --slurm_cluster "* || -n "${NUM_GPUS:-}" ]] || gpus=-1

    [[ ! -e "$MODEL_DIR" || -d "$MODEL_DIR" ]] || die "MODEL_DIR=$MODEL_DIR exists and is not a directory: point MODEL_DIR at a directory (checkpoints, logs and exports go there)"
    mkdir -p "$MODEL_DIR" 2>/dev/null || die "MODEL_DIR=$MODEL_DIR cannot be created: check the path and its permissions"
    local log="$MODEL_DIR/run${role:+-$role}.log" output
    output="$(mktemp)"
    trap "rm -f '$output'" EXIT
    step "Training (log: $log)"
    python -m official.xception.imagenet_main --data_dir="$DATA_DIR" --model_dir="$MODEL_DIR" \
        --num_gpus="$gpus" --export_dir="$MODEL_DIR/export" "${cluster[@]}" "$@" \
        2>&1 | tee -a "$log" "$output"
    # Only the task that exported (the chief) evaluates, and only what it exported just now.
    local export
    export="$(sed -n 's/^exported SavedModel: //p' "$output" | tail -n 1)"
    if [[ -n "$export" ]]; then
        step "Evaluating the SavedModel $export"
        python -m official.xception.evaluate_saved_model --saved_model_dir="$export" \
            --data_dir="$DATA_DIR" 2>&1 | tee -a "$log"
    fi
    # The chief (which exported) and the evaluator (which evaluates last) write the report; in a
    # cluster both rewrite the same files atomically, and `python -m official.xception.report`
    # rewrites them at any time.
    if [[ -n "$export" || "$role" == evaluator* ]]; then
        write_report "$MODEL_DIR" 2>&1 | tee -a "$log"
    fi
}

if [[ -n "${DATA_DIR:-}" ]]; then
    run_real "$@"
else
    [[ -z "${MODEL_DIR:-}${RAW_DIR:-}" ]] || die "MODEL_DIR/RAW_DIR are set but DATA_DIR is not: set DATA_DIR (where the shards are or go) too"
    run_demo "$@"
fi
