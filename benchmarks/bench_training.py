r"""Training throughput: our Estimator pipeline against Keras's own Xception + model.fit, side by side.

    python -m benchmarks.bench_training --image_size=96 --batch_size=16 --steps=15

Both run the same step on the same synthetic batch (one batch repeated, no input cost): Xception
forward + backward, momentum SGD, no dropout, no weight decay, no weight averaging. Prints images/s of
each, their ratio (goal: Estimator / Keras >= 1.0) and the achieved FLOP/s against this machine's
measured matmul peak (8.4 G multiply-adds forward per 299x299 image, about 3x that per training image).
"""

import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

from official.xception import flags_core
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib

flags.DEFINE_integer("image_size", 96, "Square image side.")
flags.DEFINE_integer("batch_size", 16, "Batch size of both pipelines.")
flags.DEFINE_integer("steps", 15, "Timed training steps per pipeline.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (graph optimization, allocation).")
flags.DEFINE_enum("dtype", "fp32", list(flags_core.DTYPES), "Compute type of both pipelines.")
flags.DEFINE_integer("repeats", 2, "Alternating rounds (Estimator, Keras, Estimator, ...); the best "
                     "round of each counts, so load from other processes hurts both alike.")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul that measures the peak.")
FLAGS = flags.FLAGS

NUM_CLASSES = 1000
FORWARD_MULTIPLY_ADDS_299 = 8.4e9


class _StepTimer(tf.estimator.SessionRunHook):
    """Wall time of the steps after the first `warmup_steps`."""

    def __init__(self, warmup_steps):
        self._warmup_steps = warmup_steps
        self._steps = 0
        self.start_time = self.end_time = None

    def after_run(self, run_context, run_values):
        self._steps += 1
        if self._steps == self._warmup_steps:
            self.start_time = time.perf_counter()
        self.end_time = time.perf_counter()


class _BatchTimer(tf.keras.callbacks.Callback):
    def __init__(self, warmup_steps):
        super().__init__()
        self._warmup_steps = warmup_steps
        self.start_time = self.end_time = None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self._warmup_steps:
            self.start_time = time.perf_counter()
        self.end_time = time.perf_counter()


def estimator_images_per_sec(model_dir):
    compute_dtype = flags_core.DTYPES[FLAGS.dtype]
    learning_rate = model_fn_lib.LearningRateConfig(
        steps_per_epoch=1000.0, global_batch_size=FLAGS.batch_size, base_learning_rate=0.01,
        base_batch_size=FLAGS.batch_size)
    config = model_fn_lib.ModelConfig(
        learning_rate=learning_rate, num_classes=NUM_CLASSES, image_size=FLAGS.image_size,
        compute_dtype=compute_dtype, dropout_rate=0.0, weight_decay=0.0, moving_average_decay=0.0)
    estimator = tf.estimator.Estimator(
        model_fn_lib.model_fn, model_dir=model_dir, params={"model_config": config},
        config=tf.estimator.RunConfig(save_checkpoints_steps=None, save_checkpoints_secs=None,
                                      save_summary_steps=10 ** 9, log_step_count_steps=10 ** 9))
    timer = _StepTimer(FLAGS.warmup_steps)

    def input_fn():
        return input_pipeline.synthetic_input_fn(True, FLAGS.batch_size, image_size=FLAGS.image_size,
                                                 num_classes=NUM_CLASSES,
                                                 dtype=tf.as_dtype(compute_dtype))

    estimator.train(input_fn, steps=FLAGS.warmup_steps + FLAGS.steps, hooks=[timer])
    return FLAGS.steps * FLAGS.batch_size / (timer.end_time - timer.start_time)


def keras_images_per_sec():
    if FLAGS.dtype != "fp32":
        tf.keras.mixed_precision.set_global_policy(f"mixed_{flags_core.DTYPES[FLAGS.dtype]}")
    model = tf.keras.applications.Xception(
        weights=None, input_shape=(FLAGS.image_size, FLAGS.image_size, 3), classes=NUM_CLASSES,
        classifier_activation=None)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = input_pipeline.synthetic_input_fn(True, FLAGS.batch_size, image_size=FLAGS.image_size,
                                                num_classes=NUM_CLASSES)
    timer = _BatchTimer(FLAGS.warmup_steps)
    model.fit(dataset, steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps, epochs=1, verbose=0,
              callbacks=[timer])
    tf.keras.mixed_precision.set_global_policy("float32")
    return FLAGS.steps * FLAGS.batch_size / (timer.end_time - timer.start_time)


def matmul_peak_flops():
    """FLOP/s of a large square matmul in the benchmark's dtype (the practical peak here)."""
    dtype = tf.as_dtype(flags_core.DTYPES[FLAGS.dtype])
    size = FLAGS.matmul_size
    a = tf.cast(tf.random.uniform([size, size]), dtype)
    b = tf.cast(tf.random.uniform([size, size]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    product().numpy()
    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        product().numpy()
    return repeats * 2.0 * size ** 3 / (time.perf_counter() - start)


def main(_):
    train_flops_per_image = 3 * 2 * FORWARD_MULTIPLY_ADDS_299 * (FLAGS.image_size / 299) ** 2
    ours_rounds, keras_rounds = [], []
    for _ in range(FLAGS.repeats):
        with tempfile.TemporaryDirectory() as model_dir:
            ours_rounds.append(estimator_images_per_sec(model_dir))
        keras_rounds.append(keras_images_per_sec())
    ours, keras = max(ours_rounds), max(keras_rounds)
    peak = matmul_peak_flops()
    print(f"Xception training, {FLAGS.image_size}x{FLAGS.image_size}, batch {FLAGS.batch_size}, "
          f"{FLAGS.dtype}, {FLAGS.steps} timed steps after {FLAGS.warmup_steps}:")
    for name, rate in [("Estimator (model_fn)", ours), ("Keras model.fit", keras)]:
        achieved = rate * train_flops_per_image
        print(f"  {name:22s} {rate:8.2f} images/s  {achieved / 1e9:7.1f} GFLOP/s "
              f"({100 * achieved / peak:4.1f}% of the {peak / 1e9:.0f} GFLOP/s matmul peak)")
    print(f"  rounds (images/s): Estimator {', '.join(f'{r:.2f}' for r in ours_rounds)}; "
          f"Keras {', '.join(f'{r:.2f}' for r in keras_rounds)}")
    print(f"  ratio Estimator / Keras: {ours / keras:.3f} (goal >= 1.0)")


if __name__ == "__main__":
    app.run(main)
