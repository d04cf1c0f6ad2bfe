r"""Trains and evaluates Xception on ImageNet TFRecords with tf.estimator.

    python -m official.xception.imagenet_main --data_dir=/data/imagenet-tfrecords \
        --model_dir=/checkpoints/xception --batch_size=256

Every hyperparameter is a flag (--helpfull lists them; --flagfile reads them from a file). The defaults
are the paper's recipe. Re-running the same command resumes from the last checkpoint in --model_dir.
On several machines, give each the same command plus --worker_hosts and its --task_index (or a
TF_CONFIG, or --slurm_cluster under srun) with --distribution_strategy=multi_worker_mirrored;
evaluation then runs in a separate process, started with --task_type=evaluator (or a TF_CONFIG task of
type "evaluator").
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from official.utils import cluster
from official.utils import dataset_info
from official.utils import flags_core
from official.utils import hooks as hooks_lib
from official.utils import logging_setup
from official.utils import run_safety
from official.utils import tensorboard_layout
from official.utils.errors import PipelineError
from official.xception import export
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib
from official.xception import preprocessing
from official.xception import run_checks
from official.xception import run_record
from official.xception import shard_check
from official.xception import xception_flags
from official.xception import xception_model

_NON_FINITE_LOSS = re.compile(r"\[%s\] \[(\d+)\] \[loss\] \[([^\]]+)\]"
                              % re.escape(model_fn_lib.NON_FINITE_LOSS_TAG))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where training runs: the strategy (None for one device) and this process's role."""

    strategy: Optional[tf.distribute.Strategy]
    num_replicas: int
    num_cpu_devices: int
    is_chief: bool
    multi_worker: bool
    num_gpus: int = 0


def configure_cluster(worker_hosts, task_index, task_type="worker", slurm_port=None):
    """Sets TF_CONFIG from --worker_hosts/--task_index/--task_type or from Slurm's environment
    (unless given), checks it and returns it as a dict.

    Args:
      worker_hosts: host:port of every training task (the chief first), or None.
      task_index: this task's index in `worker_hosts`.
      task_type: "worker" or "evaluator" (with `worker_hosts`).
      slurm_port: build the cluster from the Slurm job step, tasks listening from this port; None
        not to.
    """
    given = [name for name, present in (("TF_CONFIG", bool(os.environ.get("TF_CONFIG"))),
                                        ("--worker_hosts", bool(worker_hosts)),
                                        ("--slurm_cluster", slurm_port is not None)) if present]
    if len(given) > 1:
        raise PipelineError(f"both {given[0]} and {given[1]} are set: use one of them")
    if task_type != "worker" and not worker_hosts:
        raise PipelineError(f"--task_type={task_type} goes with --worker_hosts (with TF_CONFIG or "
                            "--slurm_cluster the task type comes from there)")
    if worker_hosts or slurm_port is not None:
        tf_config = (cluster.tf_config_from_hosts(worker_hosts, task_index, task_type)
                     if worker_hosts else cluster.tf_config_from_slurm(slurm_port))
        os.environ["TF_CONFIG"] = json.dumps(tf_config)
    else:
        try:
            tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        except json.JSONDecodeError as error:
            raise PipelineError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster.check_tf_config(tf_config)
    return tf_config


def _is_chief(tf_config):
    """The chief writes checkpoints and summaries: task "chief", or worker 0 in a cluster without one
    (RunConfig.is_chief is not reliable for multi-worker Estimators)."""
    task = tf_config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return (task.get("type") == "worker" and task.get("index", 0) == 0
            and "chief" not in tf_config.get("cluster", {}))


def _cross_device_ops(all_reduce_alg, on_gpus):
    algorithm = all_reduce_alg or ("nccl" if on_gpus else "reduction_to_one_device")
    if algorithm == "nccl" and not on_gpus:
        raise PipelineError("--all_reduce_alg=nccl needs GPUs; use reduction_to_one_device on CPU")
    choices = {
        "nccl": tf.distribute.NcclAllReduce,
        "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce,
        "reduction_to_one_device": tf.distribute.ReductionToOneDevice,
    }
    if algorithm not in choices:
        raise PipelineError(f"--all_reduce_alg={algorithm} is for multi_worker_mirrored; "
                            f"--distribution_strategy=mirrored takes one of {sorted(choices)}")
    return choices[algorithm]()


def _use_first_gpus(count):
    """Hides the GPUs past the first `count` from TensorFlow (all of them for 0), so that nothing,
    including MultiWorkerMirroredStrategy's choice of devices, lands on them."""
    gpus = tf.config.list_physical_devices("GPU")
    if count < len(gpus):
        try:
            tf.config.set_visible_devices(gpus[:count], "GPU")
        except RuntimeError:
            # Too late once TensorFlow's runtime has started; the session config still hides them.
            logging.warning("Could not hide GPUs past the first %d: TensorFlow already uses them",
                            count)


def make_placement(strategy_name, num_gpus, num_cpu_replicas, all_reduce_alg, tf_config,
                   peer_timeout_secs=600):
    """The distribution strategy for the flags; raises PipelineError for impossible combinations.

    A multi-worker strategy waits for every training task of `tf_config`; after `peer_timeout_secs`
    without them the process ends with a one-line error.
    """
    visible_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus < 0:
        num_gpus = visible_gpus
    task_type = tf_config.get("task", {}).get("type")
    # An evaluator's --num_gpus is each training task's, which sets its batch; it uses one device.
    if num_gpus > visible_gpus and task_type != cluster.EVALUATOR:
        raise PipelineError(f"--num_gpus={num_gpus} but this machine has {visible_gpus} visible GPUs")
    # The evaluator evaluates on one device: it must not take memory on the others, which training
    # tasks on the same machine use.
    _use_first_gpus(min(1 if task_type == cluster.EVALUATOR else num_gpus, visible_gpus))
    if num_cpu_replicas < 1:
        raise PipelineError(f"--num_cpu_replicas must be at least 1, got {num_cpu_replicas}")
    if num_gpus and num_cpu_replicas > 1:
        raise PipelineError("--num_cpu_replicas is for machines without GPUs: pass --num_gpus=0")
    devices = ([f"/gpu:{i}" for i in range(num_gpus)] if num_gpus
               else [f"/cpu:{i}" for i in range(num_cpu_replicas)])
    is_chief = _is_chief(tf_config)

    if strategy_name == "multi_worker_mirrored" or tf_config.get("cluster"):
        if strategy_name != "multi_worker_mirrored":
            raise PipelineError("TF_CONFIG/--worker_hosts describe a cluster: pass "
                                "--distribution_strategy=multi_worker_mirrored")
        if not tf_config.get("cluster"):
            raise PipelineError("--distribution_strategy=multi_worker_mirrored needs TF_CONFIG or "
                                "--worker_hosts and --task_index")
        if task_type == cluster.EVALUATOR:
            # The evaluator reads the chief's checkpoints on one device and trains nothing; its
            # batch is the training replicas'.
            return Placement(None, cluster.training_task_count(tf_config) * len(devices), 1, False,
                             True, min(num_gpus, visible_gpus, 1))
        implementation = {
            None: tf.distribute.experimental.CommunicationImplementation.AUTO,
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }
        if all_reduce_alg not in implementation:
            raise PipelineError(f"--all_reduce_alg={all_reduce_alg} is for mirrored; "
                                "multi_worker_mirrored takes ring, nccl or auto")
        # A collective that waits longer than this for a peer fails instead of hanging (a peer
        # whose machine vanished closes no connection); see cluster.peer_loss_ends_task.
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation[all_reduce_alg], timeout_seconds=peer_timeout_secs)
        strategy = cluster.join_cluster(
            functools.partial(tf.distribute.MultiWorkerMirroredStrategy,
                              communication_options=options),
            tf_config, peer_timeout_secs)
        return Placement(strategy, strategy.num_replicas_in_sync, 1, is_chief, True, num_gpus)

    if strategy_name == "off" or (strategy_name == "mirrored" and len(devices) == 1):
        if len(devices) > 1:
            raise PipelineError("--distribution_strategy=off runs on one device: pass --num_gpus=1 "
                                "(or 0) and --num_cpu_replicas=1, or use mirrored")
        return Placement(None, 1, 1, True, False, num_gpus)
    if strategy_name == "one_device":
        return Placement(tf.distribute.OneDeviceStrategy(devices[0]), 1, 1, True, False, num_gpus)
    # Built outside eager mode: eager knows one CPU device, the Estimator's sessions get
    # num_cpu_replicas of them from the RunConfig's session_config.
    with tf.Graph().as_default():
        strategy = tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=_cross_device_ops(all_reduce_alg, bool(num_gpus)))
    return Placement(strategy, len(devices), 1 if num_gpus else num_cpu_replicas, True, False,
                     num_gpus)


def per_replica_batch_size(global_batch_size, num_replicas):
    if global_batch_size < 1 or global_batch_size % num_replicas:
        raise PipelineError(f"--batch_size={global_batch_size} is the global batch and must divide "
                            f"evenly by the {num_replicas} replicas: use a multiple of {num_replicas}")
    return global_batch_size // num_replicas


def training_cycle_ends(total_steps, steps_per_epoch, epochs_between_evals):
    """Global steps after which training pauses for an evaluation; the last one is total_steps."""
    if epochs_between_evals <= 0:
        raise PipelineError(f"--epochs_between_evals must be positive, got {epochs_between_evals}")
    cycle_steps = max(1, math.ceil(epochs_between_evals * steps_per_epoch))
    return list(range(cycle_steps, total_steps, cycle_steps)) + [total_steps]


def make_model_config(flags_obj, global_batch_size):
    compute_dtype = flags_core.DTYPES[flags_obj.dtype]
    has_gpu = flags_obj.num_gpus != 0 and bool(tf.config.list_physical_devices("GPU"))
    if flags_obj.loss_scale is not None and compute_dtype != "float16":
        raise PipelineError("--loss_scale applies to --dtype=fp16 only")
    loss_scale = flags_obj.loss_scale or "dynamic"
    if loss_scale != "dynamic":
        try:
            loss_scale = float(loss_scale)
        except ValueError:
            raise PipelineError(f"--loss_scale must be 'dynamic' or a number, got {loss_scale!r}") \
                from None
    try:
        boundaries = tuple(float(epoch) for epoch in flags_obj.lr_boundary_epochs)
    except ValueError:
        raise PipelineError(f"--lr_boundary_epochs must be numbers, got "
                            f"{flags_obj.lr_boundary_epochs}") from None
    xception_model.check_image_size(flags_obj.image_size)
    data_format = flags_obj.data_format or ("channels_first" if has_gpu else "channels_last")
    if data_format == "channels_first" and not has_gpu:
        raise PipelineError("--data_format=channels_first needs a GPU and --num_gpus=0 trains on the "
                            "CPU: use --data_format=channels_last")
    xception_model.check_data_format_supported(data_format)
    if flags_obj.train_examples < 1:
        raise PipelineError(f"--train_examples must be positive, got {flags_obj.train_examples}")
    learning_rate = model_fn_lib.LearningRateConfig(
        steps_per_epoch=flags_obj.train_examples / global_batch_size,
        global_batch_size=global_batch_size,
        base_learning_rate=flags_obj.base_learning_rate,
        base_batch_size=flags_obj.base_batch_size,
        schedule=flags_obj.learning_rate_schedule,
        decay_rate=flags_obj.lr_decay_rate,
        decay_epochs=flags_obj.lr_decay_epochs,
        boundary_epochs=boundaries,
        boundary_decay=flags_obj.lr_boundary_decay,
        total_epochs=flags_obj.train_epochs,
        warmup_epochs=flags_obj.warmup_epochs)
    checkpoint = flags_obj.pretrained_model_checkpoint_path
    if checkpoint:
        model_fn_lib.resolve_checkpoint(checkpoint, "--pretrained_model_checkpoint_path")
    return model_fn_lib.ModelConfig(
        learning_rate=learning_rate,
        num_classes=flags_obj.num_classes,
        image_size=flags_obj.image_size,
        data_format=data_format,
        compute_dtype=compute_dtype,
        dropout_rate=flags_obj.dropout_rate,
        batch_norm_momentum=flags_obj.batch_norm_momentum,
        label_smoothing=flags_obj.label_smoothing,
        weight_decay=flags_obj.weight_decay,
        decay_biases=flags_obj.decay_biases,
        optimizer=flags_obj.optimizer,
        momentum=flags_obj.momentum,
        moving_average_decay=flags_obj.moving_average_decay,
        evaluate_raw_weights=flags_obj.eval_raw_weights,
        average_batch_norm_statistics=flags_obj.average_batch_norm_statistics,
        loss_scale=loss_scale,
        fine_tune=flags_obj.fine_tune,
        warm_start_checkpoint=checkpoint,
        pretrained_learning_rate_multiplier=flags_obj.pretrained_learning_rate_multiplier)


def make_run_config(flags_obj, placement):
    session_config = tf.compat.v1.ConfigProto(
        allow_soft_placement=True,
        inter_op_parallelism_threads=flags_obj.inter_op_parallelism_threads,
        intra_op_parallelism_threads=flags_obj.intra_op_parallelism_threads)
    if placement.num_cpu_devices > 1:
        # Without it, MirroredStrategy over /cpu:1 hangs at the first step with no error.
        session_config.device_count["CPU"] = placement.num_cpu_devices
    if not placement.num_gpus:
        # Soft placement would otherwise put ops without a device on a GPU the machine has.
        session_config.device_count["GPU"] = 0
    if flags_obj.enable_xla:
        if not tf.config.list_physical_devices("GPU"):
            logging.warning("--enable_xla on CPU: expect it to be several times slower")
        session_config.graph_options.optimizer_options.global_jit_level = (
            tf.compat.v1.OptimizerOptions.ON_1)
    if flags_obj.save_checkpoints_steps:
        checkpoint_every = {"save_checkpoints_steps": flags_obj.save_checkpoints_steps}
    elif placement.multi_worker:
        checkpoint_every = {"save_checkpoints_steps": flags_core.MULTI_WORKER_CHECKPOINT_STEPS}
    else:
        checkpoint_every = {"save_checkpoints_secs": 600}
    return tf.estimator.RunConfig(
        model_dir=flags_obj.model_dir,
        tf_random_seed=flags_obj.seed,
        session_config=session_config,
        # A non-chief saves into model_dir/tmp_worker_N only because saving runs collectives on
        # every task; it restores the chief's checkpoints. One is the least it can keep (0 is all).
        keep_checkpoint_max=flags_obj.keep_checkpoint_max if placement.is_chief else 1,
        log_step_count_steps=flags_obj.log_steps,
        save_summary_steps=flags_obj.log_steps,
        train_distribute=placement.strategy,
        **checkpoint_every)


def make_input_fns(flags_obj, model_config, batch_size):
    """(train input_fn, eval input_fn, eval steps or None for the whole validation set)."""
    dtype = tf.as_dtype(model_config.compute_dtype)
    if flags_obj.use_synthetic_data:
        synthetic = functools.partial(
            input_pipeline.synthetic_input_fn, batch_size=batch_size,
            image_size=model_config.image_size, num_classes=model_config.num_classes, dtype=dtype)
        return (functools.partial(synthetic, True), functools.partial(synthetic, False),
                math.ceil(flags_obj.eval_examples / batch_size))
    if not flags_obj.data_dir:
        raise PipelineError("--data_dir is required (or --use_synthetic_data)")
    for is_training in (True, False):
        # Fails now, with a one-line message, rather than after the graph is built.
        files = input_pipeline.list_input_files(
            flags_obj.data_dir, is_training,
            allow_incomplete_shards=flags_obj.allow_incomplete_shards)
        if flags_obj.allow_incomplete_shards:
            total = input_pipeline.shard_set_size(files[0])
            log = logging.info if len(files) == total else logging.warning
            log("--allow_incomplete_shards: %s reads %d of %d shards (%s: %d)",
                "training" if is_training else "evaluation", len(files), total,
                "an epoch is --train_examples" if is_training else "--eval_examples",
                flags_obj.train_examples if is_training else flags_obj.eval_examples)
    common = dict(data_dir=flags_obj.data_dir, batch_size=batch_size,
                  image_size=model_config.image_size, num_classes=model_config.num_classes,
                  label_offset=flags_obj.label_offset, dtype=dtype,
                  datasets_num_private_threads=flags_obj.datasets_num_private_threads,
                  allow_incomplete_shards=flags_obj.allow_incomplete_shards,
                  skip_corrupt_records=flags_obj.skip_corrupt_records)
    train = functools.partial(input_pipeline.input_fn, True, shuffle_buffer=flags_obj.shuffle_buffer,
                              augmentation=make_augmentation(flags_obj), seed=flags_obj.seed, **common)
    evaluate = functools.partial(input_pipeline.input_fn, False,
                                 eval_central_fraction=flags_obj.eval_central_fraction, **common)
    return train, evaluate, None


def _float_pair(values, flag_name):
    try:
        low, high = (float(value) for value in values)
    except ValueError:
        raise PipelineError(f"--{flag_name} takes two numbers, min,max; got {','.join(values)}") \
            from None
    return low, high


def make_augmentation(flags_obj):
    try:
        return preprocessing.AugmentationConfig(
            area_range=_float_pair(flags_obj.crop_area_range, "crop_area_range"),
            aspect_ratio_range=_float_pair(flags_obj.crop_aspect_ratio_range,
                                           "crop_aspect_ratio_range"),
            min_object_covered=flags_obj.min_object_covered,
            random_flip=flags_obj.random_flip,
            color_distortion=flags_obj.color_distortion)
    except PipelineError as error:
        raise PipelineError(f"{error} (--crop_area_range, --crop_aspect_ratio_range, "
                            "--min_object_covered)") from None


# Fewer bytes than this per record cannot hold a photograph: ImageNet's JPEGs average about 110 KB,
# and even a 32x32 one with the record's other fields takes more.
_MIN_BYTES_PER_IMAGE = 1000
# Shards whose sizes stand for the whole set: stat-ing all 1024 on network storage takes a while.
_SHARDS_SIZED = 8


def _estimated_train_bytes(data_dir, allow_incomplete_shards):
    """Bytes of the whole training shard set, from the sizes of its first few shards."""
    files = input_pipeline.list_input_files(data_dir, True,
                                            allow_incomplete_shards=allow_incomplete_shards)
    sized = files[:_SHARDS_SIZED]
    mean_bytes = sum(tf.io.gfile.stat(path).length for path in sized) / len(sized)
    return mean_bytes * input_pipeline.shard_set_size(files[0])


def _warn_without_summary(flags_obj):
    """Says which values a run on shards without build_summary.json assumes, and refuses to train
    with ImageNet's epoch size on shards far too small to be ImageNet."""
    assumed = {name: flags_obj[name].value for name in
               ("num_classes", "label_offset", "train_examples", "eval_examples")
               if not flags_obj[name].present}
    if not assumed:
        return
    data_dir = flags_obj.data_dir
    command = dataset_info.DESCRIBE_SHARDS_COMMAND + data_dir
    described = {"num_classes": "{:,} classes", "label_offset": "label offset {}",
                 "train_examples": "{:,} training images", "eval_examples": "{:,} validation images"}
    logging.warning(
        "\n%s\nNo %s in --data_dir=%s: assuming ImageNet, %s (the defaults of %s).\n"
        "For shards that are not exactly ImageNet's (built by other tools), describe them once "
        "first:\n    %s\nor pass those flags.\n%s",
        "=" * 100, dataset_info.SUMMARY_NAME, data_dir,
        ", ".join(described[name].format(value) for name, value in assumed.items()),
        ", ".join(f"--{name}" for name in assumed), command, "=" * 100)
    training = not (flags_obj.eval_only or flags_obj.export_only)
    if not training or "train_examples" not in assumed:
        return
    total_bytes = _estimated_train_bytes(data_dir, flags_obj.allow_incomplete_shards)
    if total_bytes / flags_obj.train_examples < _MIN_BYTES_PER_IMAGE:
        raise PipelineError(
            f"--data_dir={data_dir} has no {dataset_info.SUMMARY_NAME} and its training shards hold "
            f"about {total_bytes:,.0f} bytes, too few for the assumed --train_examples="
            f"{flags_obj.train_examples:,} ImageNet images: run {command} (or pass "
            "--train_examples, --eval_examples and --num_classes)")


def apply_dataset_info(flags_obj):
    """Takes --num_classes, --label_offset, --train_examples and --eval_examples from the shards'
    build_summary.json where they are not given; a given flag that contradicts it is an error.
    Without a summary, warns which values are assumed (see _warn_without_summary).

    Returns:
      The DatasetInfo, or None without a summary (shards of other tools, synthetic data).
    """
    if flags_obj.use_synthetic_data or not flags_obj.data_dir:
        return None
    info = dataset_info.read_dataset_info(flags_obj.data_dir)
    if info is None:
        _warn_without_summary(flags_obj)
        return None
    source = os.path.join(flags_obj.data_dir, dataset_info.SUMMARY_NAME)
    if not flags_obj["label_offset"].present:
        flags_obj.label_offset = info.first_label
    derived = {"num_classes": info.num_outputs(flags_obj.label_offset),
               "train_examples": info.train_examples, "eval_examples": info.eval_examples}
    for name, value in derived.items():
        if value is None:
            continue
        if not flags_obj[name].present:
            setattr(flags_obj, name, value)
        elif flags_obj[name].value != value:
            raise PipelineError(
                f"--{name}={flags_obj[name].value} contradicts {source}, which implies {value}"
                + (f" with --label_offset={flags_obj.label_offset}" if name == "num_classes" else "")
                + f"; leave --{name} out to take it from the summary")
    logging.info("From %s: %d classes (labels from %d, --label_offset=%d), %s training and %s "
                 "validation images", source, flags_obj.num_classes, info.first_label,
                 flags_obj.label_offset, info.train_examples, info.eval_examples)
    return info


def class_names_for_export(flags_obj, info):
    """[(name, text)] per output: the list saved beside the checkpoints, else the data's, else None."""
    names = dataset_info.read_class_names(flags_obj.model_dir)
    if names is None and info is not None:
        names = info.class_names(flags_obj.label_offset, flags_obj.num_classes)
    if names is None:
        logging.warning("No class list in --model_dir or --data_dir: the export names classes "
                        "class_0, class_1, ...")
    return names


def export_latest(flags_obj, info, model_builder=None):
    """Exports the last checkpoint of --model_dir to a new numbered directory in --export_dir."""
    try:
        path, averaged = export.export_saved_model(
            flags_obj.model_dir, flags_obj.export_dir, num_classes=flags_obj.num_classes,
            image_size=flags_obj.image_size, label_offset=flags_obj.label_offset,
            class_names=class_names_for_export(flags_obj, info),
            central_fraction=flags_obj.eval_central_fraction,
            use_moving_averages=flags_obj.moving_average_decay > 0,
            model_builder=model_builder or xception_model.xception,
            provenance_file=run_record.record_path(flags_obj.model_dir))
    except (OSError, tf.errors.OpError) as error:
        message = run_safety.io_error_message(error, f"--export_dir={flags_obj.export_dir}")
        if message is None:
            raise
        raise PipelineError(f"export failed, earlier exports are untouched: {message} "
                            "with --export_only") from None
    logging.info("Exported %s (%d variables from their moving averages)", path, averaged)
    print(f"exported SavedModel: {path}")
    return path


def _explain_data_or_space_error(error, model_dir, data_dir):
    """Raises PipelineError for a corrupt shard or a full disk; returns for other errors."""
    if data_dir:
        shard_check.locate_or_raise(error, data_dir)
    message = run_safety.io_error_message(error, f"--model_dir={model_dir}")
    if message:
        latest = tf.train.latest_checkpoint(model_dir)
        raise PipelineError(f"{message} to resume from the last complete checkpoint "
                            f"({latest or 'none yet'})") from None


@contextlib.contextmanager
def explained_run_errors(model_dir, data_dir=None):
    """Turns the failures of known data and loss checks during a session run, corrupt shards and a
    full disk into PipelineError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        data_message = input_pipeline.data_error_message(error)
        if data_message:
            raise PipelineError(f"bad record in --data_dir: {data_message}") from None
        match = _NON_FINITE_LOSS.search(error.message)
        if not match:
            _explain_data_or_space_error(error, model_dir, data_dir)
            raise
        latest = tf.train.latest_checkpoint(model_dir)
        raise PipelineError(
            f"training stopped: the loss is {match.group(2)} at global step {match.group(1)}; "
            f"the last good checkpoint ({latest or 'none yet'}) is kept in --model_dir={model_dir}: "
            "lower --base_learning_rate (or add --warmup_epochs) and re-run to resume") from None
    except tf.errors.OpError as error:
        _explain_data_or_space_error(error, model_dir, data_dir)
        raise


def _log_evaluation(results, expected_examples, counted_examples_exact, skip_corrupt_records=False):
    logging.info("Evaluation at step %d: %s over %d examples", results["global_step"],
                 model_fn_lib.describe_evaluation(results), results[model_fn_lib.EVAL_EXAMPLES_KEY])
    if skip_corrupt_records:
        # What evaluation kept, against the split's size, also counts the records lost to
        # unreadable bytes, which no stage of tf.data can count.
        logging.warning("--skip_corrupt_records: evaluation left out %s of %d validation records; "
                        "%d records that break the schema or whose image does not decode left out "
                        "so far in this process (training counts one each time it reads it)",
                        expected_examples - results[model_fn_lib.EVAL_EXAMPLES_KEY]
                        if counted_examples_exact else "an unknown number", expected_examples,
                        input_pipeline.skipped_image_count())
    elif counted_examples_exact and results[model_fn_lib.EVAL_EXAMPLES_KEY] != expected_examples:
        logging.warning("Evaluated %d examples but --eval_examples=%d: is --data_dir the full "
                        "validation set?", results[model_fn_lib.EVAL_EXAMPLES_KEY], expected_examples)


def checkpoint_step(model_dir):
    """The global step of the last checkpoint in `model_dir`, 0 without one."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        return 0
    return int(tf.train.load_checkpoint(latest).get_tensor(tf.compat.v1.GraphKeys.GLOBAL_STEP))


def check_cluster_flags(flags_obj, training_tasks):
    """Raises PipelineError for flags that a job of `training_tasks` tasks cannot run with, before
    any task waits for the others."""
    single_machine_only = [f"--{name}" for name in ("stop_threshold", "epochs_between_evals")
                           if flags_obj[name].present]
    if single_machine_only:
        raise PipelineError(
            f"{' and '.join(single_machine_only)} apply to one machine; several machines train to "
            "--train_epochs (or --max_train_steps) while the evaluator evaluates each new "
            "checkpoint (--eval_throttle_secs): leave them out")
    if flags_obj.batch_size % training_tasks:
        raise PipelineError(f"--batch_size={flags_obj.batch_size} is the global batch and must "
                            f"divide evenly by the {training_tasks} training tasks' replicas: use a "
                            f"multiple of {training_tasks} times each task's GPU count")


def _record_start(flags_obj, model_config, tf_config, num_replicas):
    """Appends this start's provenance record (docs/DESIGN.md §11), and the TensorBoard layout that
    overlays the raw and averaged weights' evaluations (docs/DESIGN.md §7.5)."""
    run_record.write_training_record(flags_obj.model_dir, flags_obj, tf_config, num_replicas,
                                     checkpoint_step(flags_obj.model_dir))
    if model_config.moving_average_decay and model_config.evaluate_raw_weights:
        tensorboard_layout.write_overlay_layout(flags_obj.model_dir, "raw and averaged weights",
                                                model_fn_lib.raw_and_averaged_charts())


def run(flags_obj, model_builder=None):
    """Trains and/or evaluates as the flags say; returns the last evaluation's results (or {})."""
    if not flags_obj.model_dir:
        raise PipelineError("--model_dir is required (checkpoints and summaries go there)")
    run_checks.validate_run_flags(flags_obj)
    if flags_obj.eval_only and flags_obj.export_only:
        raise PipelineError("--eval_only and --export_only each do one thing only: run with one, "
                            "then with the other")
    if flags_obj.export_only:
        if not flags_obj.export_dir:
            raise PipelineError("--export_only needs --export_dir (where the SavedModel goes)")
        info = apply_dataset_info(flags_obj)
        if tf.train.latest_checkpoint(flags_obj.model_dir) is None:
            raise PipelineError(f"--export_only: --model_dir={flags_obj.model_dir} holds no "
                                "checkpoint; train first or convert Keras weights into it")
        export_latest(flags_obj, info, model_builder)
        return {}
    # The cluster first: a malformed host list is the error to report, whatever the data.
    tf_config = configure_cluster(flags_obj.worker_hosts, flags_obj.task_index, flags_obj.task_type,
                                  flags_obj.slurm_port if flags_obj.slurm_cluster else None)
    if tf_config.get("cluster"):
        check_cluster_flags(flags_obj, cluster.training_task_count(tf_config))
        if "://" not in flags_obj.model_dir:
            # Every task writes its own file beside the checkpoints, on the storage all tasks share.
            log_file = logging_setup.log_cluster_task_to_file(os.path.join(
                flags_obj.model_dir, f"{run_safety.task_name(tf_config)}.log"))
            if log_file:
                print(f"this task's full log: {log_file}", file=sys.stderr, flush=True)
    info = apply_dataset_info(flags_obj)
    if not flags_obj.eval_only:
        task = run_safety.task_name(tf_config)
        run_safety.lock_model_dir(flags_obj.model_dir, task)
        if task == "train":  # alone, this process makes every save into --model_dir
            removed = run_safety.remove_save_leftovers(flags_obj.model_dir)
            if removed:
                logging.warning("Removed what a killed checkpoint save left in --model_dir: %s",
                                ", ".join(removed))
    placement = make_placement(flags_obj.distribution_strategy, flags_obj.num_gpus,
                               flags_obj.num_cpu_replicas, flags_obj.all_reduce_alg, tf_config,
                               flags_obj.peer_timeout_secs)
    global_batch = flags_obj.batch_size
    batch_size = per_replica_batch_size(global_batch, placement.num_replicas)
    model_config = make_model_config(flags_obj, global_batch)
    train_input_fn, eval_input_fn, eval_steps = make_input_fns(flags_obj, model_config, batch_size)
    steps_per_epoch = model_config.learning_rate.steps_per_epoch
    total_steps = math.ceil(flags_obj.train_epochs * steps_per_epoch)
    if flags_obj.max_train_steps is not None:
        total_steps = min(total_steps, flags_obj.max_train_steps)
    train_hooks = hooks_lib.get_train_hooks(
        flags_obj.hooks, global_batch_size=global_batch, max_steps=total_steps,
        model_dir=flags_obj.model_dir, every_n_steps=flags_obj.log_steps,
        is_chief=placement.is_chief)
    logging.info("Global batch %d = %d replicas x %d; learning rate %.5g (%.5g for a batch of %d); "
                 "%.1f steps per epoch, %d steps in all", global_batch, placement.num_replicas,
                 batch_size, model_config.learning_rate.scaled_learning_rate,
                 flags_obj.base_learning_rate, flags_obj.base_batch_size, steps_per_epoch, total_steps)

    run_checks.check_resume_compatible(
        flags_obj.model_dir, flags_obj.num_classes,
        info.class_names(flags_obj.label_offset, flags_obj.num_classes) if info else None)
    if flags_obj.skip_corrupt_records:
        logging.warning("--skip_corrupt_records: records whose bytes or image are corrupt are left "
                        "out; each evaluation logs the count (python -m "
                        "official.xception.verify_shards lists them)")
    estimator = tf.estimator.Estimator(
        model_fn=model_fn_lib.model_fn, config=make_run_config(flags_obj, placement),
        params={"model_config": model_config, "model_builder": model_builder})
    count_is_exact = eval_steps is None
    if info is not None and placement.is_chief and not flags_obj.eval_only:
        # Beside the checkpoints, so that a later --export_only names the classes right.
        try:
            dataset_info.write_class_names(
                flags_obj.model_dir, info.class_names(flags_obj.label_offset, flags_obj.num_classes))
        except (OSError, tf.errors.OpError) as error:
            message = run_safety.io_error_message(error, f"--model_dir={flags_obj.model_dir}")
            if message is None:
                raise
            raise PipelineError(f"{message} (classes.tsv)") from None

    with explained_run_errors(flags_obj.model_dir, flags_obj.data_dir):
        if placement.is_chief and not flags_obj.eval_only:
            _record_start(flags_obj, model_config, tf_config, placement.num_replicas)
        if flags_obj.eval_only:
            if tf.train.latest_checkpoint(flags_obj.model_dir) is None:
                raise PipelineError(f"--eval_only: --model_dir={flags_obj.model_dir} holds no "
                                    "checkpoint; train first or convert Keras weights into it")
            results = estimator.evaluate(eval_input_fn, steps=eval_steps)
            _log_evaluation(results, flags_obj.eval_examples, count_is_exact,
                            flags_obj.skip_corrupt_records)
            return results

        def train_input_fn_from(start_step):
            if flags_obj.use_synthetic_data:
                return train_input_fn
            return functools.partial(train_input_fn, start_step=start_step)

        results = {}
        done_steps = checkpoint_step(flags_obj.model_dir)
        # An evaluator that starts late still evaluates the final checkpoint, once.
        is_evaluator = tf_config.get("task", {}).get("type") == cluster.EVALUATOR
        if done_steps >= total_steps and not is_evaluator:
            logging.info("--model_dir=%s is at global step %d, the last step is %d: nothing left to "
                         "train or evaluate", flags_obj.model_dir, done_steps, total_steps)
        elif placement.multi_worker:
            if is_evaluator:
                # No part of the collectives: it outlives a lost training task until the timeout.
                cluster.end_evaluator_when_training_is_lost(
                    tf_config, flags_obj.peer_timeout_secs,
                    lambda: checkpoint_step(flags_obj.model_dir) >= total_steps)
            with (contextlib.nullcontext() if is_evaluator
                  else cluster.peer_loss_ends_task(tf_config, flags_obj.peer_timeout_secs)):
                tf.estimator.train_and_evaluate(
                    estimator,
                    tf.estimator.TrainSpec(train_input_fn_from(done_steps), max_steps=total_steps,
                                           hooks=train_hooks),
                    tf.estimator.EvalSpec(eval_input_fn, steps=eval_steps, start_delay_secs=0,
                                          throttle_secs=flags_obj.eval_throttle_secs))
        else:
            cycle_ends = [end for end in training_cycle_ends(total_steps, steps_per_epoch,
                                                             flags_obj.epochs_between_evals)
                          if end > done_steps]
            if done_steps:
                logging.info("Resuming at global step %d: %d training cycles left", done_steps,
                             len(cycle_ends))
            for cycle_end in cycle_ends:
                estimator.train(train_input_fn_from(checkpoint_step(flags_obj.model_dir)),
                                max_steps=cycle_end, hooks=train_hooks)
                results = estimator.evaluate(eval_input_fn, steps=eval_steps)
                _log_evaluation(results, flags_obj.eval_examples, count_is_exact,
                                flags_obj.skip_corrupt_records)
                if (flags_obj.stop_threshold is not None
                        and results[model_fn_lib.TOP_1_KEY] >= flags_obj.stop_threshold):
                    logging.info("Top-1 %.4f reached --stop_threshold=%g: stopping",
                                 results[model_fn_lib.TOP_1_KEY], flags_obj.stop_threshold)
                    break
    if flags_obj.export_dir and placement.is_chief:
        export_latest(flags_obj, info, model_builder)
    return results


def main(_, model_builder=None):
    logging_setup.log_through_absl_only()
    try:
        run(flags.FLAGS, model_builder)
    except PipelineError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    xception_flags.define_all()
    logging.set_verbosity(logging.INFO)
    app.run(main)
