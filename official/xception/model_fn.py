"""The Estimator model_fn of Xception: loss, weight decay, optimizers, learning-rate schedules, Polyak
averaging, metrics, warm start and fine-tuning.

Pitfalls this module is built around (see docs/DESIGN.md §8):
- Keras layers inside a model_fn do not put their batch-norm updates in UPDATE_OPS; the train op runs
  `model.get_updates_for(...)` explicitly.
- Weight decay is chosen by what a variable is (the kernel of a conv, separable-conv or dense layer),
  never by substrings of its name.
- Only `tf.compat.v1.train` optimizers update variables inside a model_fn. Under a distribution strategy
  their `compute_gradients` already divides a mean loss by the replica count; nothing here divides again.
- Under a mixed-precision policy each replica's model wraps the shared float32 (mirrored) variables in
  its own AutoCastVariable. The optimizer, the moving averages and every lookup by variable get the
  wrapped variable (`underlying_variable`): the wrappers differ per replica, which the optimizer sees as
  a PerReplica value, and a wrapper's `.ref()` never equals its variable's.
"""

import dataclasses
import math
import re
from typing import Optional, Tuple, Union

from absl import logging
import tensorflow as tf

from official.utils import hooks
from official.utils.errors import PipelineError
from official.xception import xception_model

OPTIMIZERS = ("momentum", "nesterov", "rmsprop")
LEARNING_RATE_SCHEDULES = ("exponential", "piecewise", "cosine")

# Tags in the graph that the run loop and hooks look up; hooks fetch tensors by these names.
LEARNING_RATE_TENSOR = hooks.LEARNING_RATE_TENSOR
TOTAL_LOSS_TENSOR = hooks.TOTAL_LOSS_TENSOR
CROSS_ENTROPY_TENSOR = hooks.CROSS_ENTROPY_TENSOR
L2_LOSS_TENSOR = "l2_loss"
TRAIN_TOP_1_TENSOR = "train_top_1_accuracy"
# First words of the assertion that stops training on a NaN/Inf loss; the run loop recognizes it.
NON_FINITE_LOSS_TAG = "Non-finite loss at global step"

# Estimator eval metric keys ("loss" is added by the Estimator itself, as the mean of batch losses).
TOP_1_KEY = "top_1_accuracy"
TOP_5_KEY = "top_5_accuracy"
EVAL_CROSS_ENTROPY_KEY = "cross_entropy"
EVAL_EXAMPLES_KEY = "examples"
# The same metrics of the raw (not averaged) weights, computed in the same pass over the data when
# the checkpoint has Polyak averages (docs/DESIGN.md §7.5); their summaries sit under this prefix.
RAW_WEIGHTS_PREFIX = "raw_weights/"

_WEIGHT_LAYER_TYPES = (tf.keras.layers.Conv2D, tf.keras.layers.SeparableConv2D,
                       tf.keras.layers.DepthwiseConv2D, tf.keras.layers.Dense)
_KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")
# Layers whose weights are never decayed: batch norm's gamma/beta (decaying them fights the
# normalization) and layers without trainable weights.
_UNDECAYED_LAYER_TYPES = (tf.keras.layers.BatchNormalization,)


@dataclasses.dataclass(frozen=True)
class LearningRateConfig:
    """The learning rate as a function of the global step.

    `base_learning_rate` refers to a global batch of `base_batch_size` examples; the rate used is scaled
    linearly to `global_batch_size` (Goyal et al.). Epochs are counted as global_step / steps_per_epoch.
    """

    steps_per_epoch: float
    global_batch_size: int
    base_learning_rate: float = 0.045
    base_batch_size: int = 256
    schedule: str = "exponential"
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    boundary_epochs: Tuple[float, ...] = (30.0, 60.0, 80.0)
    boundary_decay: float = 0.1
    total_epochs: float = 100.0
    warmup_epochs: float = 0.0

    def __post_init__(self):
        if self.schedule not in LEARNING_RATE_SCHEDULES:
            raise PipelineError(f"--learning_rate_schedule must be one of {LEARNING_RATE_SCHEDULES}, "
                                f"got {self.schedule!r}")
        if self.steps_per_epoch <= 0:
            raise PipelineError(f"steps per epoch must be positive, got {self.steps_per_epoch}: "
                                "check --train_examples and --batch_size")
        if self.base_learning_rate <= 0 or self.base_batch_size <= 0:
            raise PipelineError("--base_learning_rate and --base_batch_size must be positive")
        if self.decay_epochs <= 0:
            raise PipelineError(f"--lr_decay_epochs must be positive, got {self.decay_epochs}")
        if list(self.boundary_epochs) != sorted(self.boundary_epochs):
            raise PipelineError(f"--lr_boundary_epochs must increase, got {list(self.boundary_epochs)}")
        if self.warmup_epochs < 0 or self.total_epochs <= 0:
            raise PipelineError("--warmup_epochs must be >= 0 and --train_epochs positive")

    @property
    def scaled_learning_rate(self):
        return self.base_learning_rate * self.global_batch_size / self.base_batch_size


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the model_fn needs besides the data; see imagenet_main's flags for the meanings."""

    learning_rate: LearningRateConfig
    num_classes: int = 1000
    image_size: int = xception_model.DEFAULT_IMAGE_SIZE
    data_format: str = "channels_last"
    compute_dtype: str = "float32"
    dropout_rate: float = 0.5
    batch_norm_momentum: float = xception_model.KERAS_BATCH_NORM_MOMENTUM
    label_smoothing: float = 0.0
    # Multiplies tf.nn.l2_loss, i.e. the loss gets weight_decay * sum(w^2) / 2.
    weight_decay: float = 1e-5
    decay_biases: bool = False
    optimizer: str = "momentum"
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    rmsprop_epsilon: float = 1.0
    moving_average_decay: float = 0.9999
    # Evaluation also computes the metrics of the raw weights beside those of their averages.
    evaluate_raw_weights: bool = True
    # Whether the Polyak averages also cover batch norm's moving mean and variance (off by default:
    # evaluation with them was worse on a short real run, see the README).
    average_batch_norm_statistics: bool = False
    # float16 only: "dynamic" or a fixed number.
    loss_scale: Union[str, float] = "dynamic"
    # float16 with a dynamic loss scale: where it starts (TensorFlow's default); it halves after each
    # step whose gradients are not finite (that step is skipped) and doubles after 2000 good ones.
    initial_loss_scale: float = 2.0 ** 15
    fine_tune: bool = False
    warm_start_checkpoint: Optional[str] = None
    # Full fine-tuning: the learning rate of the warm-started layers relative to the head's.
    pretrained_learning_rate_multiplier: float = 1.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise PipelineError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise PipelineError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise PipelineError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.moving_average_decay < 1.0:
            raise PipelineError(
                f"--moving_average_decay must be in [0, 1) (0 turns averaging off), "
                f"got {self.moving_average_decay}")
        if self.average_batch_norm_statistics and self.moving_average_decay == 0:
            raise PipelineError("--average_batch_norm_statistics needs Polyak averaging: set "
                                "--moving_average_decay (e.g. 0.9999)")
        if self.num_classes < 2:
            raise PipelineError(f"--num_classes must be at least 2, got {self.num_classes}")
        if self.fine_tune and not self.warm_start_checkpoint:
            raise PipelineError("--fine_tune trains only the head on top of pretrained weights: "
                                "also pass --pretrained_model_checkpoint_path")
        if self.pretrained_learning_rate_multiplier != 1.0:
            if not self.warm_start_checkpoint or self.fine_tune:
                raise PipelineError(
                    "--pretrained_learning_rate_multiplier applies to full fine-tuning: pass "
                    "--pretrained_model_checkpoint_path, without --fine_tune")
            if self.optimizer == "rmsprop":
                raise PipelineError(
                    "--pretrained_learning_rate_multiplier needs --optimizer=momentum or nesterov "
                    "(it scales gradients, which RMSProp normalizes away)")
            if self.pretrained_learning_rate_multiplier < 0:
                raise PipelineError("--pretrained_learning_rate_multiplier must be >= 0, got "
                                    f"{self.pretrained_learning_rate_multiplier}")


def learning_rate_schedule(global_step, config):
    """The learning rate tensor at `global_step` (see LearningRateConfig)."""
    step = tf.cast(global_step, tf.float32)
    epoch = step / config.steps_per_epoch
    peak = config.scaled_learning_rate
    if config.schedule == "exponential":
        # Staircase: the paper decays by 0.94 every 2 whole epochs.
        rate = peak * tf.pow(config.decay_rate, tf.floor(epoch / config.decay_epochs))
    elif config.schedule == "piecewise":
        boundaries = [float(b) for b in config.boundary_epochs]
        values = [peak * config.boundary_decay ** i for i in range(len(boundaries) + 1)]
        rate = tf.compat.v1.train.piecewise_constant(epoch, boundaries, values)
    else:
        progress = tf.minimum(epoch / config.total_epochs, 1.0)
        rate = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
    if config.warmup_epochs > 0:
        warmup = peak * epoch / config.warmup_epochs
        rate = tf.where(epoch < config.warmup_epochs, warmup, rate)
    return tf.identity(rate, name=LEARNING_RATE_TENSOR)


def decayed_variables(model, decay_biases=False):
    """The variables weight decay applies to: kernels of conv, separable/depthwise conv and dense layers
    (and their biases with `decay_biases`), restricted to the model's trainable variables.

    Raises TypeError for a layer type with trainable weights that this policy does not know, rather than
    silently leaving it undecayed.
    """
    trainable = {v.ref() for v in model.trainable_variables}
    chosen = []
    for layer in model.submodules:
        if not isinstance(layer, tf.keras.layers.Layer) or isinstance(layer, tf.keras.Model):
            continue
        if isinstance(layer, _WEIGHT_LAYER_TYPES):
            attributes = _KERNEL_ATTRIBUTES + (("bias",) if decay_biases else ())
            for attribute in attributes:
                variable = getattr(layer, attribute, None)
                if variable is not None and variable.ref() in trainable:
                    chosen.append(variable)
        elif layer.trainable_weights and not isinstance(layer, _UNDECAYED_LAYER_TYPES):
            raise TypeError(f"weight decay policy does not know layer {layer.name} of type "
                            f"{type(layer).__name__}")
    return chosen


def l2_loss(variables, weight_decay):
    """weight_decay * sum over variables of tf.nn.l2_loss (= sum(w^2) / 2), in float32."""
    if not variables or weight_decay == 0:
        return tf.constant(0.0, tf.float32)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def cross_entropy_per_example(logits, labels, num_classes, label_smoothing=0.0):
    """Softmax cross-entropy of integer labels, with labels smoothed towards the uniform distribution."""
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))


def make_optimizer(config, learning_rate):
    """A tf.compat.v1.train optimizer (the Keras v2 optimizers silently do nothing in a model_fn)."""
    if config.optimizer == "rmsprop":
        optimizer = tf.compat.v1.train.RMSPropOptimizer(
            learning_rate, decay=config.rmsprop_decay, momentum=config.momentum,
            epsilon=config.rmsprop_epsilon)
    else:
        optimizer = tf.compat.v1.train.MomentumOptimizer(
            learning_rate, config.momentum, use_nesterov=config.optimizer == "nesterov")
    if config.compute_dtype == "float16":
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        if config.loss_scale == "dynamic":
            loss_scale = tf.compat.v1.mixed_precision.DynamicLossScale(
                initial_loss_scale=config.initial_loss_scale)
        else:
            loss_scale = tf.compat.v1.mixed_precision.FixedLossScale(config.loss_scale)
        # A scale that keeps falling in TensorBoard means steps with overflowing gradients skipped.
        tf.compat.v1.summary.scalar("loss_scale", loss_scale())
        optimizer = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
            optimizer, loss_scale)
    return optimizer


def resolve_checkpoint(path, flag_name):
    """A checkpoint prefix from a file prefix or a directory (its latest checkpoint)."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise PipelineError(f"{flag_name}={path}: the directory holds no checkpoint")
        return latest
    if not tf.io.gfile.glob(path + ".index") and not tf.io.gfile.exists(path):
        raise PipelineError(f"{flag_name}={path}: no such checkpoint (give a directory or a "
                            "checkpoint prefix such as model.ckpt-1000)")
    return path


def _variable_name(variable):
    return variable.name.split(":", 1)[0]


def underlying_variable(variable):
    """The float32 variable behind a mixed-precision layer's AutoCastVariable (else `variable`).

    Keras exports neither the wrapper's class nor a way to unwrap it. In the graph a model_fn builds,
    the wrapper reports the name of the variable it wraps, and the graph's global-variables collection
    holds that variable itself (the mirrored one under a strategy), so the name finds it.
    """
    for candidate in tf.compat.v1.global_variables():
        if candidate.name == variable.name:
            return candidate
    return variable


def weights_and_statistics(model):
    """(weights, batch-norm moving statistics) of `model`, as underlying variables.

    The weights are every variable training can change, whether or not fine-tuning freezes it now; the
    statistics are the moving mean and variance of each batch-norm layer.
    """
    statistics = []
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            statistics += [underlying_variable(layer.moving_mean),
                           underlying_variable(layer.moving_variance)]
    statistic_refs = {v.ref() for v in statistics}
    weights = [underlying_variable(v) for v in model.weights]
    return [v for v in weights if v.ref() not in statistic_refs], statistics


def averaged_variables(model, average_batch_norm_statistics):
    """The variables whose Polyak averages training keeps: every weight (frozen ones too, so that a
    fine-tuned checkpoint has the averages of the whole network), and the batch-norm moving statistics
    with `average_batch_norm_statistics`."""
    weights, statistics = weights_and_statistics(model)
    return weights + statistics if average_batch_norm_statistics else weights


def warm_start(model, checkpoint, averages=None):
    """Makes the model's variables (weights and batch-norm statistics) initialize from `checkpoint`,
    and their moving averages in `averages` (an ExponentialMovingAverage) too.

    The head is skipped when its shape differs (another --num_classes); any other missing or differently
    shaped variable is an error. Has no effect once model_dir has its own checkpoint, which is restored
    instead of running initializers.
    """
    flag = "--pretrained_model_checkpoint_path"
    checkpoint = resolve_checkpoint(checkpoint, flag)
    shapes = dict(tf.train.list_variables(checkpoint))
    head = {underlying_variable(v).ref() for v in _head_layer(model).weights}
    assignment = {}
    for variable in map(underlying_variable, model.weights):
        name = _variable_name(variable)
        shape = variable.shape.as_list()
        if variable.ref() in head and shapes.get(name) != shape:
            logging.info("Warm start: skipping %s (checkpoint shape %s, model %s)", name,
                         shapes.get(name), shape)
            continue
        if name not in shapes:
            raise PipelineError(f"{flag}={checkpoint}: has no variable {name}; is it an Xception "
                                "checkpoint (e.g. from convert_keras_weights)?")
        if shapes[name] != shape:
            raise PipelineError(f"{flag}={checkpoint}: {name} has shape {shapes[name]}, the model "
                                f"needs {shape} (check --image_size/--data_format)")
        assignment[name] = variable
    tf.compat.v1.train.init_from_checkpoint(checkpoint, assignment)
    if averages is not None:
        # Otherwise an average starts from the variable's random initial value under a distribution
        # strategy (the initializer it copies is the one from before the warm start).
        shadows = {name: averages.average(variable) for name, variable in assignment.items()}
        tf.compat.v1.train.init_from_checkpoint(
            checkpoint, {name: shadow for name, shadow in shadows.items() if shadow is not None})
    logging.info("Warm start from %s: %d variables", checkpoint, len(assignment))


def _head_layer(model):
    try:
        return model.get_layer(xception_model.HEAD_LAYER_NAME)
    except ValueError:
        raise TypeError(f"the model has no head layer named {xception_model.HEAD_LAYER_NAME!r}") from None


def freeze_all_but_head(model):
    """Fine-tuning: only the head trains; batch norm below it runs in inference mode (Keras semantics of
    trainable=False), so its statistics stay those of the pretrained network."""
    head = _head_layer(model)
    for layer in model.layers:
        if layer is not head:
            layer.trainable = False


def averaged_weights_mapping(checkpoint_path, weights, statistics=()):
    """{checkpoint name: variable} for a Saver that restores the Polyak averages of `weights` (and of
    the batch-norm `statistics` when the checkpoint has theirs) into the variables themselves, and
    every other global variable as saved. For the eval graph and prediction.

    Returns None when `checkpoint_path` has no averages of the weights at all (e.g. converted Keras
    weights, or training without --moving_average_decay): the raw weights are then used, with a warning.

    Raises:
      PipelineError: the checkpoint has the averages of some weights (or statistics) but not all.
    """
    if checkpoint_path is None:
        return None
    in_checkpoint = {name for name, _ in tf.train.list_variables(checkpoint_path)}
    averages = tf.train.ExponentialMovingAverage(decay=0.0)
    weights = [underlying_variable(v) for v in weights]
    statistics = [underlying_variable(v) for v in statistics]
    averaged_weights = _with_averages(checkpoint_path, weights, in_checkpoint,
                                      "trainable variables")
    if not averaged_weights:
        logging.warning("%s has no moving averages of the weights: evaluating the raw weights",
                        checkpoint_path)
        return None
    averaged_statistics = _with_averages(checkpoint_path, statistics, in_checkpoint,
                                         "batch-norm moving statistics")
    averaged = {v.ref() for v in averaged_weights + averaged_statistics}
    mapping = {}
    for variable in tf.compat.v1.global_variables():
        name = (averages.average_name(variable) if variable.ref() in averaged
                else _variable_name(variable))
        mapping[name] = variable
    if averaged_statistics:
        logging.info("Evaluating the averages of %d of %d trainable variables and of %d of %d "
                     "batch-norm moving statistics from %s", len(averaged_weights), len(weights),
                     len(averaged_statistics), len(statistics), checkpoint_path)
    else:
        logging.info("Evaluating the averages of %d of %d trainable variables (batch-norm moving "
                     "statistics as trained) from %s", len(averaged_weights), len(weights),
                     checkpoint_path)
    return mapping


def _with_averages(checkpoint_path, variables, in_checkpoint, kind):
    """Those of `variables` whose average `checkpoint_path` has: all of them or none."""
    averages = tf.train.ExponentialMovingAverage(decay=0.0)
    found = [v for v in variables if averages.average_name(v) in in_checkpoint]
    if found and len(found) != len(variables):
        found_refs = {v.ref() for v in found}
        missing = next(_variable_name(v) for v in variables if v.ref() not in found_refs)
        raise PipelineError(
            f"{checkpoint_path} has the moving averages of only {len(found)} of {len(variables)} "
            f"{kind} (not of {missing}): was it written by another network or program? Pass "
            "--moving_average_decay=0 to use its raw weights")
    return found


def _top_k_hits(logits, labels, k):
    return tf.cast(tf.nn.in_top_k(predictions=tf.cast(logits, tf.float32), targets=labels,
                                  k=min(k, logits.shape[-1])), tf.float32)


def _count_metric(batch_examples):
    """(value, update_op) counting the examples seen by evaluation."""
    total = tf.compat.v1.Variable(
        0, dtype=tf.int64, trainable=False, name="eval_examples",
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    return tf.identity(total), total.assign_add(tf.cast(batch_examples, tf.int64))


def build_model(params, seed=None):
    """The Keras model for `params` (its "model_builder" if given, else Xception).

    `seed` makes the initial weights and dropout masks reproducible: Keras draws an unseeded
    initializer's seed from Python's `random`, which the graph seed does not reach, so without it two
    runs with the same --seed start from different weights.
    """
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    config = params["model_config"]
    builder = params.get("model_builder") or xception_model.xception
    return builder(num_classes=config.num_classes, dropout_rate=config.dropout_rate,
                   image_size=config.image_size, data_format=config.data_format,
                   compute_dtype=config.compute_dtype,
                   batch_norm_momentum=config.batch_norm_momentum)


def _replica_seed(config):
    """The RunConfig's seed plus the replica's index, so that replicas draw different dropout masks
    (mirrored variables take replica 0's initial values whatever the others draw); None without one."""
    if config is None or config.tf_random_seed is None:
        return None
    context = tf.distribute.get_replica_context()
    replica = tf.get_static_value(context.replica_id_in_sync_group) if context else 0
    return config.tf_random_seed + int(replica)


def model_fn(features, labels, mode, params, config=None):
    """Estimator model_fn.

    params: {"model_config": ModelConfig, "model_builder": optional callable with xception()'s keyword
    arguments returning a Keras model with a `predictions` head}. `config` is the Estimator's RunConfig
    (its model_dir holds the checkpoint evaluation reads the averaged weights from).
    """
    model_config = params["model_config"]
    images = features["images"] if isinstance(features, dict) else features
    is_training = mode == tf.estimator.ModeKeys.TRAIN
    model = build_model(params, seed=_replica_seed(config))
    if model_config.fine_tune:
        freeze_all_but_head(model)
    logits = tf.cast(model(images, training=is_training), tf.float32)

    if mode == tf.estimator.ModeKeys.PREDICT:
        predictions = prediction_outputs(logits)
        return tf.estimator.EstimatorSpec(
            mode, predictions=predictions,
            export_outputs={"serving_default": tf.estimator.export.PredictOutput(predictions)},
            scaffold=_averaged_weights_scaffold(model_config, config, model))

    labels = tf.cast(labels, tf.int32)
    per_example = cross_entropy_per_example(logits, labels, model_config.num_classes,
                                            model_config.label_smoothing)
    cross_entropy = tf.reduce_mean(per_example, name=CROSS_ENTROPY_TENSOR)
    decay = tf.identity(l2_loss(decayed_variables(model, model_config.decay_biases),
                                model_config.weight_decay), name=L2_LOSS_TENSOR)
    loss = tf.add(cross_entropy, decay, name=TOTAL_LOSS_TENSOR)

    if mode == tf.estimator.ModeKeys.EVAL:
        metrics, scaffold = _evaluation(params, config, model, images, logits, labels)
        return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metrics,
                                          scaffold=scaffold)

    train_op, averages = _train_op(model, images, loss, model_config)
    if model_config.warm_start_checkpoint:
        warm_start(model, model_config.warm_start_checkpoint, averages)
    train_top_1 = tf.reduce_mean(_top_k_hits(logits, labels, 1), name=TRAIN_TOP_1_TENSOR)
    tf.compat.v1.summary.scalar("cross_entropy", cross_entropy)
    tf.compat.v1.summary.scalar("l2_loss", decay)
    tf.compat.v1.summary.scalar("train_top_1_accuracy", train_top_1)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _averaged_weights_scaffold(model_config, config, model):
    """Evaluation and prediction read the Polyak averages of the latest checkpoint where it has them
    (None: the Estimator's default saver, raw weights)."""
    mapping = _averaged_weights_mapping_of_latest(model_config, config, model)
    return tf.compat.v1.train.Scaffold(saver=tf.compat.v1.train.Saver(mapping)) if mapping else None


def _averaged_weights_mapping_of_latest(model_config, config, model):
    if model_config.moving_average_decay <= 0 or config is None:
        return None
    return averaged_weights_mapping(tf.train.latest_checkpoint(config.model_dir),
                                    *weights_and_statistics(model))


def _accuracy_metrics(logits, labels, num_classes, prefix=""):
    """Top-1, top-5 and the plain negative log-likelihood (whatever label smoothing training used)."""
    return {
        prefix + TOP_1_KEY: tf.compat.v1.metrics.mean(_top_k_hits(logits, labels, 1)),
        prefix + TOP_5_KEY: tf.compat.v1.metrics.mean(_top_k_hits(logits, labels, 5)),
        prefix + EVAL_CROSS_ENTROPY_KEY: tf.compat.v1.metrics.mean(
            cross_entropy_per_example(logits, labels, num_classes)),
    }


def raw_and_averaged_charts():
    """{chart title: tag patterns}: each evaluation metric of the averages overlaid with the raw
    weights' (TensorBoard's Custom Scalars dashboard)."""
    return {key: [f"^{re.escape(prefix + key)}$" for prefix in ("", RAW_WEIGHTS_PREFIX)]
            for key in (TOP_1_KEY, TOP_5_KEY, EVAL_CROSS_ENTROPY_KEY)}


def describe_evaluation(results):
    """'top-1 0.7000, top-5 0.9000, cross-entropy 1.2000', for the averaged and the raw weights when
    evaluation computed both."""
    def figures(prefix):
        return (f"top-1 {results[prefix + TOP_1_KEY]:.4f}, top-5 {results[prefix + TOP_5_KEY]:.4f}, "
                f"cross-entropy {results[prefix + EVAL_CROSS_ENTROPY_KEY]:.4f}")
    if RAW_WEIGHTS_PREFIX + TOP_1_KEY not in results:
        return figures("")
    return f"averaged weights {figures('')}; raw weights {figures(RAW_WEIGHTS_PREFIX)}"


def _evaluation(params, config, model, images, logits, labels):
    """(eval metric ops, scaffold): the metrics of `model`, which reads the Polyak averages where the
    checkpoint has them, and then, with `evaluate_raw_weights`, those of a second copy of the network
    that reads the raw weights, on the same batches (docs/DESIGN.md §7.5)."""
    model_config = params["model_config"]
    metrics = _accuracy_metrics(logits, labels, model_config.num_classes)
    metrics[EVAL_EXAMPLES_KEY] = _count_metric(tf.shape(labels)[0])
    # Taken before the copy exists: it maps every global variable of the graph.
    mapping = _averaged_weights_mapping_of_latest(model_config, config, model)
    if mapping is None:
        return metrics, None
    if model_config.evaluate_raw_weights:
        with tf.name_scope(RAW_WEIGHTS_PREFIX.rstrip("/")):
            raw_model = build_model(params)
        raw_logits = tf.cast(raw_model(images, training=False), tf.float32)
        metrics.update(_accuracy_metrics(raw_logits, labels, model_config.num_classes,
                                         RAW_WEIGHTS_PREFIX))
        # Same builder, same order: the copy's variables pair with the model's one for one.
        copies = []
        for variable, raw in zip(sum(weights_and_statistics(model), []),
                                 sum(weights_and_statistics(raw_model), [])):
            name = _variable_name(variable)
            if mapping.get(name) is variable:
                # Not averaged (batch-norm statistics by default): one name cannot restore two
                # variables, so the copy takes the model's value once it is restored.
                copies.append(raw.assign(variable))
            else:
                mapping[name] = raw
        return metrics, tf.compat.v1.train.Scaffold(
            saver=tf.compat.v1.train.Saver(mapping),
            ready_for_local_init_op=tf.compat.v1.report_uninitialized_variables(
                list(mapping.values())),
            local_init_op=tf.group(tf.compat.v1.train.Scaffold.default_local_init_op(), *copies))
    return metrics, tf.compat.v1.train.Scaffold(saver=tf.compat.v1.train.Saver(mapping))


def prediction_outputs(logits):
    """Classes, probabilities and logits from float32 logits (prediction and serving)."""
    return {
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
        "probabilities": tf.nn.softmax(logits),
        "logits": logits,
    }


def _train_op(model, images, loss, model_config):
    """(train op, the ExponentialMovingAverage or None)."""
    global_step = tf.compat.v1.train.get_or_create_global_step()
    learning_rate = learning_rate_schedule(global_step, model_config.learning_rate)
    tf.compat.v1.summary.scalar("learning_rate", learning_rate)
    optimizer = make_optimizer(model_config, learning_rate)
    variables = [underlying_variable(v) for v in model.trainable_variables]
    # The assertion fails the session run before any variable changes, so the checkpoint on disk is the
    # last good one; the run loop turns its message into a one-line error naming the step.
    loss_is_finite = tf.debugging.Assert(
        tf.math.is_finite(loss), [NON_FINITE_LOSS_TAG, global_step, "loss", loss])
    with tf.control_dependencies([loss_is_finite]):
        grads_and_vars = optimizer.compute_gradients(loss, variables)
    multiplier = model_config.pretrained_learning_rate_multiplier
    if multiplier != 1.0:
        # With (Nesterov) momentum, scaling a variable's gradients is scaling its learning rate.
        head = {underlying_variable(v).ref() for v in _head_layer(model).weights}
        grads_and_vars = [(grad if var.ref() in head or grad is None else grad * multiplier, var)
                          for grad, var in grads_and_vars]
    update_ops = model.get_updates_for(images) + model.get_updates_for(None)
    with tf.control_dependencies(update_ops):
        train_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
    if model_config.moving_average_decay == 0:
        return train_op, None
    averages = tf.train.ExponentialMovingAverage(model_config.moving_average_decay,
                                                 num_updates=global_step)
    with tf.control_dependencies([train_op]):
        train_op = averages.apply(averaged_variables(model, model_config.average_batch_norm_statistics))
    return train_op, averages
