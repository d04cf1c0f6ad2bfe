"""Composable absl flag groups that any Estimator training main module shares: the run, performance,
distribution and export. The model's own groups live with the model (official/xception/xception_flags.py).

Flag names follow tensorflow/models' official resnet where the concept is the same. Each `define_*`
function defines its group once into `flag_values` (absl's global FLAGS by default); only main modules
call them.

Numbers: `set_ranges` gives numeric flags their valid range where they are defined, and every main
calls `check_numeric_flags` before any work, which also refuses nan and inf in every float flag.
"""

import dataclasses
import math
from typing import Optional

from absl import flags

# The choices of --hooks (official/utils/hooks.py builds them). Kept here, not imported from there, so
# that a main needing no TensorFlow (data_prep's commands) does not pay its import for its flags.
HOOK_NAMES = ("LoggingTensorHook", "ExamplesPerSecondHook", "ProfilerHook")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DISTRIBUTION_STRATEGIES = ("off", "one_device", "mirrored", "multi_worker_mirrored")
ALL_REDUCE_ALGORITHMS = ("nccl", "hierarchical_copy", "reduction_to_one_device", "ring", "auto")
# The checkpoint cadence of a multi-worker run without --save_checkpoints_steps: its tasks save
# together (saving runs collectives), so no task's clock can set it.
MULTI_WORKER_CHECKPOINT_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag: `low` <= value (< `low` when `low_open`) and likewise
    `high`; None is unbounded."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    def describe(self, is_integer):
        kind = "an integer" if is_integer else "a finite number"
        if self.high is None:
            if self.low == 0 and self.low_open and not is_integer:
                return "a positive finite number"
            if self.low is None:
                return kind
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        return (f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}"
                f"{')' if self.high_open else ']'}")


POSITIVE = Range(0, low_open=True)
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # [0, 1]
_INT64_LIMIT = 2 ** 63

# Flag name -> Range, for every FlagValues (a flag name means the same in every tool).
_RANGES = {}


def set_ranges(ranges):
    """Records {flag name: Range} for check_numeric_flags."""
    _RANGES.update(ranges)


def check_numeric_flags(flag_values=flags.FLAGS):
    """Returns the first problem of a numeric flag as one line (`--name=value: must be ...`), or None:
    a float flag that is nan or inf, or a value outside the Range given to set_ranges."""
    for name in sorted(flag_values):
        flag = flag_values[name]
        value = flag.value
        is_integer = isinstance(flag.parser, flags.IntegerParser)
        if value is None or not (is_integer or isinstance(flag.parser, flags.FloatParser)):
            continue
        valid = _RANGES.get(name, Range())
        if is_integer and not -_INT64_LIMIT <= value < _INT64_LIMIT:
            return f"--{name}={value}: must be {valid.describe(True)} (and below 2**63 in size)"
        if not (is_integer or math.isfinite(value)) or value not in valid:
            return f"--{name}={value}: must be {valid.describe(is_integer)}"
    return None


def define_base(flag_values=flags.FLAGS):
    flags.DEFINE_string("data_dir", None, "Directory of the TFRecord shards (train-*-of-*, "
                        "validation-*-of-*) written by data_prep.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "Directory for checkpoints and summaries; re-running "
                        "with the same directory resumes training from its last checkpoint.",
                        flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 256, "GLOBAL batch size: summed over all replicas of all "
                         "workers; must divide evenly by the number of replicas.",
                         flag_values=flag_values)
    flags.DEFINE_float("train_epochs", 100, "Epochs to train (of --train_examples images).",
                       flag_values=flag_values)
    flags.DEFINE_float("epochs_between_evals", 1, "Epochs of training between evaluations (one "
                       "machine; several machines refuse it: their evaluator evaluates each new "
                       "checkpoint).", flag_values=flag_values)
    flags.DEFINE_integer("max_train_steps", None, "Stop after this global step even if "
                         "--train_epochs is not reached.", flag_values=flag_values)
    flags.DEFINE_float("stop_threshold", None, "Stop once evaluation top-1 accuracy (a fraction, "
                       "e.g. 0.79) reaches this value (one machine; several machines refuse it).", flag_values=flag_values)
    flags.DEFINE_boolean("eval_only", False, "Only evaluate the last checkpoint in --model_dir.",
                         flag_values=flag_values)
    flags.DEFINE_list("hooks", ["LoggingTensorHook"], "Training hooks, comma-separated, from: "
                      + ", ".join(HOOK_NAMES) + " (case-insensitive).",
                      flag_values=flag_values)
    flags.DEFINE_integer("log_steps", 100, "Steps between progress lines, examples/sec summaries "
                         "and profiles.", flag_values=flag_values)
    flags.DEFINE_integer("save_checkpoints_steps", None, "Save a checkpoint every this many steps "
                         "(default: every 10 minutes, and always at the end of each training cycle; on several "
                         f"machines, which save together, every {MULTI_WORKER_CHECKPOINT_STEPS} steps).",
                         flag_values=flag_values)
    flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept in --model_dir (a "
                         "multi-worker non-chief keeps one in --model_dir/tmp_worker_N).",
                         flag_values=flag_values)
    flags.DEFINE_integer("seed", None, "Seed for the initial weights, dropout and the order of "
                         "training records (random crops and flips stay unseeded).",
                         flag_values=flag_values)
    set_ranges({"batch_size": AT_LEAST_1, "train_epochs": POSITIVE, "epochs_between_evals": POSITIVE,
                "max_train_steps": AT_LEAST_1, "stop_threshold": Range(0, 1, low_open=True),
                "log_steps": AT_LEAST_1, "save_checkpoints_steps": AT_LEAST_1,
                "keep_checkpoint_max": AT_LEAST_0, "seed": AT_LEAST_0})


def define_performance(flag_values=flags.FLAGS):
    flags.DEFINE_enum("dtype", "fp32", list(DTYPES), "Compute type; variables stay float32. fp16 "
                      "uses loss scaling (a step whose gradients overflow is skipped); bf16 needs "
                      "none. Both run on CPUs too (slowly: for tests).", flag_values=flag_values)
    flags.DEFINE_string("loss_scale", None, "fp16 only: 'dynamic' (the default) or a number.",
                        flag_values=flag_values)
    flags.DEFINE_boolean("enable_xla", False, "XLA auto-clustering (GPU; much slower on CPU).",
                         flag_values=flag_values)
    flags.DEFINE_enum("data_format", None, ["channels_first", "channels_last"], "Layout of the "
                      "convolutions (inputs stay NHWC); default channels_first on GPU, else last.",
                      flag_values=flag_values)
    flags.DEFINE_integer("inter_op_parallelism_threads", 0, "TF inter-op threads (0: TF picks).",
                         flag_values=flag_values)
    flags.DEFINE_integer("intra_op_parallelism_threads", 0, "TF intra-op threads (0: TF picks).",
                         flag_values=flag_values)
    flags.DEFINE_integer("datasets_num_private_threads", None, "Private tf.data thread pool size.",
                         flag_values=flag_values)
    flags.DEFINE_boolean("use_synthetic_data", False, "Random images instead of --data_dir "
                         "(benchmarking).", flag_values=flag_values)
    set_ranges({"inter_op_parallelism_threads": AT_LEAST_0,
                "intra_op_parallelism_threads": AT_LEAST_0,
                "datasets_num_private_threads": AT_LEAST_1})


def define_distribution(flag_values=flags.FLAGS):
    flags.DEFINE_integer("num_gpus", -1, "GPUs to use on this machine (-1: all visible); 0 runs "
                         "everything on the CPU. An evaluator evaluates on one device and takes "
                         "this as each training task's GPU count, for its batch.",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_cpu_replicas", 1, "With --num_gpus=0: replicas over this many CPU "
                         "devices (for testing the multi-device path).", flag_values=flag_values)
    flags.DEFINE_enum("distribution_strategy", "mirrored", list(DISTRIBUTION_STRATEGIES),
                      "mirrored: all local devices (a single device runs without a strategy); "
                      "multi_worker_mirrored: several machines via TF_CONFIG or --worker_hosts.",
                      flag_values=flag_values)
    flags.DEFINE_enum("all_reduce_alg", None, list(ALL_REDUCE_ALGORITHMS), "mirrored: nccl "
                      "(GPU default), hierarchical_copy or reduction_to_one_device (CPU default); "
                      "multi_worker_mirrored: ring, nccl or auto (default).",
                      flag_values=flag_values)
    flags.DEFINE_list("worker_hosts", None, "host:port of every worker, comma-separated (instead "
                      "of TF_CONFIG); worker 0 is the chief.", flag_values=flag_values)
    flags.DEFINE_integer("task_index", None, "This worker's index in --worker_hosts.",
                         flag_values=flag_values)
    flags.DEFINE_enum("task_type", "worker", ["worker", "evaluator"], "With --worker_hosts: "
                      "worker trains (index 0 is the chief); evaluator evaluates each new "
                      "checkpoint of --model_dir while the workers train (--task_index unused).",
                      flag_values=flag_values)
    flags.DEFINE_boolean("slurm_cluster", False, "Build the cluster from the Slurm job step (start "
                         "one task per node with srun): task 0 is the chief.",
                         flag_values=flag_values)
    flags.DEFINE_integer("slurm_port", 8888, "With --slurm_cluster: the port of a node's first task "
                         "(the next tasks of the node take the following ports).",
                         flag_values=flag_values)
    flags.DEFINE_float("peer_timeout_secs", 600, "Multi-worker: give up with an error when the other "
                       "training tasks have not all joined within this many seconds, and stop "
                       "(exit code 75: relaunch all tasks) when a collective waits this long for a "
                       "peer during training. A lost peer whose connections close ends the others "
                       "at once.",
                       flag_values=flag_values)
    flags.DEFINE_float("eval_throttle_secs", 600, "Evaluator: seconds at least between the starts of "
                       "two evaluations (each evaluates the newest checkpoint).",
                       flag_values=flag_values)
    set_ranges({"num_gpus": Range(-1), "num_cpu_replicas": AT_LEAST_1, "task_index": AT_LEAST_0,
                "slurm_port": Range(1, 65535), "peer_timeout_secs": POSITIVE,
                "eval_throttle_secs": AT_LEAST_0})


def define_export(flag_values=flags.FLAGS):
    flags.DEFINE_string("export_dir", None, "After training, export a SavedModel (serving_default on "
                        "image bytes, predict_images on preprocessed images) to a numbered "
                        "directory below this one.", flag_values=flag_values)
    flags.DEFINE_boolean("export_only", False, "Only export the last checkpoint of --model_dir to "
                         "--export_dir (e.g. converted Keras weights); no training or evaluation.",
                         flag_values=flag_values)
