r"""Training throughput: our Estimator pipeline against Keras's own Xception + model.fit, side by side.

    python -m benchmarks.bench_training --image_size=96 --batch_size=16 --rounds=5 \
        --dtype=fp32 --dtype=bf16

Both sides train on the same synthetic batch (one batch repeated, no input cost), in the same dtype,
with Xception forward + backward, batch-norm statistics updated and momentum SGD. The Estimator side is
what imagenet_main runs: its model config, RunConfig (session config, summary and checkpoint
schedule), synthetic input_fn and default training hooks, built from imagenet_main's own flags.

--recipe=bare: no dropout, no weight decay, no weight averaging on either side.
--recipe=paper: both add dropout 0.5 before the classifier, L2 weight decay 1e-5 on the conv, separable
  conv and dense kernels (in the loss), and Polyak averaging of the weights with decay 0.9999 (Keras:
  the optimizer's use_ema). Our side also runs its non-finite-loss guard in both recipes.

A third side steps the Estimator side's own graph with a bare tf.compat.v1.Session loop, so that the
Estimator's loop and hooks are told apart from the graph they run.

Rounds alternate (Estimator, bare Session, Keras, Estimator, ...; each in every --dtype) and the medians
over rounds count, so load from other processes on a shared machine hurts all alike. Prints images per wall second and per
CPU second (this process, all threads: steadier under load) of each, the ratios of the Estimator to
Keras (goal >= 1.0) and to the bare Session, and the achieved FLOP/s against this machine's matmul
peak, measured in every round too (8.4 G multiply-adds forward per 299x299 image, about 3x that per
training image).
"""

import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

from official.utils import flags_core
from official.utils import hooks as hooks_lib
from official.utils import logging_setup
from official.xception import imagenet_main
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib
from official.xception import xception_flags

flags.DEFINE_integer("image_size", 96, "Square image side.")
flags.DEFINE_integer("batch_size", 16, "Batch size of both pipelines.")
flags.DEFINE_integer("steps", 15, "Timed training steps per pipeline and round.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (graph optimization, allocation).")
flags.DEFINE_multi_enum("dtype", ["fp32"], ["fp32", "bf16"], "Compute type of every side; repeat "
                        "the flag (--dtype=fp32 --dtype=bf16) to run each side in each type within "
                        "every round and print the bf16/fp32 speed-up.")
flags.DEFINE_enum("recipe", "bare", ["bare", "paper"], "Work per step besides forward, backward, "
                  "batch-norm updates and momentum SGD (see the module docstring).")
flags.DEFINE_integer("rounds", 5, "Alternating rounds (Estimator, bare Session, Keras, ...); the "
                     "median round of each counts.")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul that measures the peak.")
FLAGS = flags.FLAGS

NUM_CLASSES = 1000
FORWARD_MULTIPLY_ADDS_299 = 8.4e9
PAPER_DROPOUT = 0.5
PAPER_WEIGHT_DECAY = 1e-5
PAPER_AVERAGE_DECAY = 0.9999


class _Stopwatch:
    """Wall and process CPU time of the steps after the first `warmup_steps`.

    CPU time (all threads of this process) is less sensitive than wall time to other jobs on a shared
    machine, so both are reported.
    """

    def __init__(self, warmup_steps):
        self._warmup_steps = warmup_steps
        self._steps = 0
        self._start = self._end = None

    def step_done(self):
        self._steps += 1
        now = (time.perf_counter(), time.process_time())
        if self._steps == self._warmup_steps:
            self._start = now
        self._end = now

    def images_per_sec(self, images):
        """(images per wall second, images per CPU second) over the timed steps."""
        return tuple(images / (end - start) for start, end in zip(self._start, self._end))


class _StepTimerHook(tf.estimator.SessionRunHook):
    def __init__(self, stopwatch):
        self._stopwatch = stopwatch

    def after_run(self, run_context, run_values):
        self._stopwatch.step_done()


class _BatchTimerCallback(tf.keras.callbacks.Callback):
    """Gets logs as numpy, so each batch end waits for its step to finish."""

    def __init__(self, stopwatch):
        super().__init__()
        self._stopwatch = stopwatch

    def on_train_batch_end(self, batch, logs=None):
        self._stopwatch.step_done()


def imagenet_main_flags(model_dir, image_size, batch_size, dtype, recipe, total_steps):
    """imagenet_main's flags for synthetic training on one CPU device, otherwise its defaults."""
    settings = dict(model_dir=model_dir, use_synthetic_data=True, image_size=image_size,
                    batch_size=batch_size, base_batch_size=batch_size, dtype=dtype,
                    num_classes=NUM_CLASSES, num_gpus=0, max_train_steps=total_steps)
    if recipe == "bare":
        settings.update(dropout_rate=0.0, weight_decay=0.0, moving_average_decay=0.0)
    else:
        settings.update(dropout_rate=PAPER_DROPOUT, weight_decay=PAPER_WEIGHT_DECAY,
                        moving_average_decay=PAPER_AVERAGE_DECAY)
    flag_values = flags.FlagValues()
    xception_flags.define_all(flag_values)
    flag_values(["imagenet_main"] + [f"--{name}={value}" for name, value in settings.items()])
    return flag_values


def imagenet_main_setup(model_dir, image_size, batch_size, dtype, recipe, total_steps):
    """(flags, model config, RunConfig, train input_fn) exactly as imagenet_main makes them."""
    main_flags = imagenet_main_flags(model_dir, image_size, batch_size, dtype, recipe, total_steps)
    placement = imagenet_main.make_placement(
        main_flags.distribution_strategy, main_flags.num_gpus, main_flags.num_cpu_replicas,
        main_flags.all_reduce_alg, tf_config={})
    model_config = imagenet_main.make_model_config(main_flags, batch_size)
    train_input_fn, _, _ = imagenet_main.make_input_fns(main_flags, model_config, batch_size)
    run_config = imagenet_main.make_run_config(main_flags, placement)
    return main_flags, model_config, run_config, train_input_fn


def estimator_images_per_sec(image_size, batch_size, dtype, recipe, steps, warmup_steps):
    total_steps = warmup_steps + steps
    with tempfile.TemporaryDirectory() as model_dir:
        main_flags, model_config, run_config, train_input_fn = imagenet_main_setup(
            model_dir, image_size, batch_size, dtype, recipe, total_steps)
        train_hooks = hooks_lib.get_train_hooks(
            main_flags.hooks, global_batch_size=batch_size, max_steps=total_steps,
            model_dir=model_dir, every_n_steps=main_flags.log_steps)
        estimator = tf.estimator.Estimator(model_fn_lib.model_fn, config=run_config,
                                           params={"model_config": model_config})
        stopwatch = _Stopwatch(warmup_steps)
        estimator.train(train_input_fn, max_steps=total_steps,
                        hooks=train_hooks + [_StepTimerHook(stopwatch)])
    return stopwatch.images_per_sec(steps * batch_size)


def session_images_per_sec(image_size, batch_size, dtype, recipe, steps, warmup_steps):
    """The Estimator side's graph (same model_fn, model config, session config and input) stepped by a
    bare tf.compat.v1.Session loop: its difference to the Estimator is what the Estimator's loop and
    hooks cost."""
    total_steps = warmup_steps + steps
    with tempfile.TemporaryDirectory() as model_dir, tf.Graph().as_default():
        _, model_config, run_config, train_input_fn = imagenet_main_setup(
            model_dir, image_size, batch_size, dtype, recipe, total_steps)
        iterator = tf.compat.v1.data.make_initializable_iterator(train_input_fn())
        images, labels = iterator.get_next()
        spec = model_fn_lib.model_fn(images, labels, tf.estimator.ModeKeys.TRAIN,
                                     {"model_config": model_config}, run_config)
        stopwatch = _Stopwatch(warmup_steps)
        with tf.compat.v1.Session(config=run_config.session_config) as session:
            session.run([tf.compat.v1.global_variables_initializer(),
                         tf.compat.v1.local_variables_initializer(), iterator.initializer])
            for _ in range(total_steps):
                session.run(spec.train_op)
                stopwatch.step_done()
    return stopwatch.images_per_sec(steps * batch_size)


def keras_xception(image_size, recipe):
    """Keras's Xception with logits; for the paper recipe, with dropout before the classifier and the
    L2 term of our model_fn added to its loss."""
    if recipe == "bare":
        return tf.keras.applications.Xception(
            weights=None, input_shape=(image_size, image_size, 3), classes=NUM_CLASSES,
            classifier_activation=None)
    base = tf.keras.applications.Xception(weights=None, input_shape=(image_size, image_size, 3),
                                          include_top=False, pooling="avg")
    features = tf.keras.layers.Dropout(PAPER_DROPOUT)(base.output)
    logits = tf.keras.layers.Dense(NUM_CLASSES, name="predictions", dtype="float32")(features)
    model = tf.keras.Model(base.input, logits)
    kernels = model_fn_lib.decayed_variables(model)
    model.add_loss(lambda: model_fn_lib.l2_loss(kernels, PAPER_WEIGHT_DECAY))
    return model


def keras_images_per_sec(image_size, batch_size, dtype, recipe, steps, warmup_steps):
    compute_dtype = flags_core.DTYPES[dtype]
    if compute_dtype != "float32":
        tf.keras.mixed_precision.set_global_policy(f"mixed_{compute_dtype}")
    try:
        model = keras_xception(image_size, recipe)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    optimizer = tf.keras.optimizers.SGD(
        0.01, momentum=0.9, use_ema=recipe == "paper", ema_momentum=PAPER_AVERAGE_DECAY)
    model.compile(optimizer=optimizer,
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = input_pipeline.synthetic_input_fn(True, batch_size, image_size=image_size,
                                                num_classes=NUM_CLASSES,
                                                dtype=tf.as_dtype(compute_dtype))
    stopwatch = _Stopwatch(warmup_steps)
    model.fit(dataset, steps_per_epoch=warmup_steps + steps, epochs=1, verbose=0,
              callbacks=[_BatchTimerCallback(stopwatch)])
    tf.keras.backend.clear_session()
    return stopwatch.images_per_sec(steps * batch_size)


def matmul_peak_flops(size, dtype, repeats=5):
    """FLOP/s of a large square matmul in `dtype` (the practical peak here)."""
    dtype = tf.as_dtype(flags_core.DTYPES[dtype])
    a = tf.cast(tf.random.uniform([size, size]), dtype)
    b = tf.cast(tf.random.uniform([size, size]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    product().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        product().numpy()
    return repeats * 2.0 * size ** 3 / (time.perf_counter() - start)


def _listed(values, digits=2):
    return ", ".join(f"{value:.{digits}f}" for value in values)


def _print_ratios(label, numerators, denominators, note):
    ratios = [ours / theirs for ours, theirs in zip(numerators, denominators)]
    median_ratio = statistics.median(numerators) / statistics.median(denominators)
    print(f"    ratio {label} {median_ratio:.3f} of the medians, per round {_listed(ratios, 3)} "
          f"({note})")


def main(_):
    logging_setup.log_through_absl_only()
    if FLAGS.rounds < 1 or FLAGS.steps < 1 or FLAGS.warmup_steps < 1:
        sys.exit("error: --rounds, --steps and --warmup_steps must be at least 1")
    dtypes = list(dict.fromkeys(FLAGS.dtype))
    train_flops_per_image = 3 * 2 * FORWARD_MULTIPLY_ADDS_299 * (FLAGS.image_size / 299) ** 2
    setup = dict(image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, recipe=FLAGS.recipe,
                 steps=FLAGS.steps, warmup_steps=FLAGS.warmup_steps)
    sides = [("Estimator", estimator_images_per_sec), ("bare Session", session_images_per_sec),
             ("Keras model.fit", keras_images_per_sec)]
    runs = [(name, dtype) for name, _ in sides for dtype in dtypes]
    rounds = {run: [] for run in runs}
    peak_rounds = {dtype: [] for dtype in dtypes}
    for round_index in range(FLAGS.rounds):
        for name, images_per_sec in sides:
            for dtype in dtypes:
                rounds[name, dtype].append(images_per_sec(dtype=dtype, **setup))
        for dtype in dtypes:
            peak_rounds[dtype].append(matmul_peak_flops(FLAGS.matmul_size, dtype))
        measured = ", ".join(f"{name} {dtype} {rounds[name, dtype][-1][0]:.2f} "
                             f"({rounds[name, dtype][-1][1]:.2f})" for name, dtype in runs)
        peaks = ", ".join(f"{dtype} {peak_rounds[dtype][-1] / 1e9:.0f}" for dtype in dtypes)
        print(f"round {round_index + 1}/{FLAGS.rounds}: images/s (per CPU-s) {measured}; "
              f"matmul GFLOP/s {peaks}", file=sys.stderr, flush=True)
    print(f"Xception training, {FLAGS.image_size}x{FLAGS.image_size}, batch {FLAGS.batch_size}, "
          f"{'/'.join(dtypes)}, recipe {FLAGS.recipe}, {FLAGS.steps} timed steps after "
          f"{FLAGS.warmup_steps}, median of {FLAGS.rounds} alternating rounds:")
    for name, dtype in runs:
        peak = statistics.median(peak_rounds[dtype])
        rate = statistics.median(wall for wall, _ in rounds[name, dtype])
        per_cpu_second = statistics.median(cpu for _, cpu in rounds[name, dtype])
        achieved = rate * train_flops_per_image
        print(f"  {name:16s} {dtype}  {rate:8.2f} images/s ({per_cpu_second:.2f} per CPU-second)  "
              f"{achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / peak:4.1f}% of the "
              f"{peak / 1e9:.0f} GFLOP/s {dtype} matmul peak")
    for clock, index in [("wall", 0), ("CPU", 1)]:
        rates = {run: [measured[index] for measured in rounds[run]] for run in runs}
        print(f"  {clock} time: " + "; ".join(f"{name} {dtype} {_listed(rates[name, dtype])}"
                                              for name, dtype in runs) + " images/s")
        for dtype in dtypes:
            for other, note in [("Keras model.fit", "goal >= 1.0"),
                                ("bare Session", "the Estimator loop's own cost")]:
                _print_ratios(f"{dtype} Estimator / {other}", rates["Estimator", dtype],
                              rates[other, dtype], note)
        if dtypes[1:]:
            for name, _ in sides:
                _print_ratios(f"{name} {dtypes[1]} / {dtypes[0]}", rates[name, dtypes[1]],
                              rates[name, dtypes[0]], "mixed-precision speed-up")


if __name__ == "__main__":
    app.run(main)
