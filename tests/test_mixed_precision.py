"""Mixed precision through imagenet_main on {one device, two CPU replicas} x {fp32, bf16}: training,
evaluation on the averages of every trainable variable (by count in the log and by value against the
export) and export, also for fp16 with its dynamic loss scale (TensorFlow 2.15 runs float16
convolutions and batch norm on the CPU); an fp16 step whose gradients overflow is skipped."""

import dataclasses
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils import flags_core
from official.xception import imagenet_main
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib
from tests import main_flags
from tests import record_fixtures
from tests import tiny_network

IMAGE_SIZE = 71
NUM_CLASSES = 3
EVAL_EXAMPLES = 6
TRAIN_STEPS = 3
# tiny_network has 9 trainable variables and 4 batch-norm moving statistics (averaged on request).
AVERAGES_LINE = {
    False: "Evaluating the averages of 9 of 9 trainable variables (batch-norm moving statistics as "
           "trained)",
    True: "Evaluating the averages of 9 of 9 trainable variables and of 4 of 4 batch-norm moving "
          "statistics",
}
# Logits of the Estimator (computing in the training dtype) against the float32 export, relative to the
# largest logit (or 1); bf16 differs by about 1% here.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    record_fixtures.write_labelled_split(directory, "train", [1 + i % NUM_CLASSES for i in range(16)],
                                         num_shards=2, seed=0)
    record_fixtures.write_labelled_split(directory, "validation",
                                         [1 + i % NUM_CLASSES for i in range(EVAL_EXAMPLES)],
                                         num_shards=1, seed=1)
    return directory


SMALL_RUN = dict(batch_size=4, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, train_examples=16,
                 eval_examples=EVAL_EXAMPLES, shuffle_buffer=16, base_learning_rate=0.2,
                 base_batch_size=4, moving_average_decay=0.5, num_gpus=0, log_steps=10, seed=1,
                 # The same training every run: no random crops, flips or colours (they are unseeded).
                 crop_area_range="1.0,1.0", crop_aspect_ratio_range="0.75,1.34", random_flip=False,
                 color_distortion=False)


def _flags(**values):
    return main_flags.parse(SMALL_RUN, **values)


def _eval_images(data_dir, dtype):
    """The validation images exactly as the Estimator's evaluation sees them, in float32."""
    dataset = input_pipeline.input_fn(False, data_dir, EVAL_EXAMPLES, image_size=IMAGE_SIZE,
                                      num_classes=NUM_CLASSES, dtype=dtype)
    images, labels = next(iter(dataset))
    return tf.cast(images, tf.float32).numpy(), labels.numpy()


def _raw_weight_logits(model_dir, images):
    """The network with the checkpoint's raw weights: what evaluation would see without averages."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    model = tiny_network.tiny_network(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
    model.set_weights([reader.get_tensor(w.name.split(":")[0]) for w in model.weights])
    return model(images, training=False).numpy()


def _nll(logits, labels):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probabilities[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("dtype, replicas, average_statistics", [
    ("fp32", 1, False), ("fp32", 2, False), ("bf16", 1, False), ("bf16", 2, False),
    ("bf16", 2, True), ("fp16", 1, False), ("fp16", 2, False),
])
def test_trains_evaluates_on_the_averages_of_every_weight_and_exports(data_dir, tmp_path, caplog,
                                                                       dtype, replicas,
                                                                       average_statistics):
    flag_values = _flags(data_dir=data_dir, model_dir=tmp_path / "model",
                         export_dir=tmp_path / "export", dtype=dtype, num_cpu_replicas=replicas,
                         max_train_steps=TRAIN_STEPS,
                         average_batch_norm_statistics=average_statistics)
    with caplog.at_level("INFO", logger="absl"):
        results = imagenet_main.run(flag_values, model_builder=tiny_network.tiny_network)
    assert results["global_step"] == TRAIN_STEPS
    assert results[model_fn_lib.EVAL_EXAMPLES_KEY] == EVAL_EXAMPLES
    assert any(AVERAGES_LINE[average_statistics] in record.getMessage()
               for record in caplog.records)
    # fp16 trains with a dynamic loss scale (TensorFlow's default start, 2**15), in the summaries.
    loss_scales = [float(value) for _, value in _summaries(tmp_path / "model", "loss_scale")]
    assert loss_scales == ([2.0 ** 15] if dtype == "fp16" else []), loss_scales
    (version,) = os.listdir(tmp_path / "export")
    exported = tf.saved_model.load(str(tmp_path / "export" / version))

    tf_dtype = tf.as_dtype(flags_core.DTYPES[dtype])
    images, labels = _eval_images(data_dir, tf_dtype)
    export_logits = exported.signatures["predict_images"](images=tf.constant(images))["logits"]
    export_logits = export_logits.numpy()
    model_config = imagenet_main.make_model_config(flag_values, flag_values.batch_size)
    estimator = tf.estimator.Estimator(
        model_fn_lib.model_fn, model_dir=str(tmp_path / "model"),
        params={"model_config": model_config, "model_builder": tiny_network.tiny_network})
    estimator_logits = np.stack([prediction["logits"] for prediction in estimator.predict(
        lambda: input_pipeline.input_fn(False, data_dir, 4, image_size=IMAGE_SIZE,
                                        num_classes=NUM_CLASSES, dtype=tf_dtype))])

    tolerance = TOLERANCE[dtype] * max(1.0, np.abs(export_logits).max())
    np.testing.assert_allclose(estimator_logits, export_logits, rtol=0, atol=tolerance)
    # The oracle tells averages from raw weights apart by far more than the tolerance.
    assert np.abs(_raw_weight_logits(tmp_path / "model", images) - export_logits).max() > 5 * tolerance
    assert results[model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == pytest.approx(
        _nll(export_logits, labels), rel=TOLERANCE[dtype])
    # The raw weights, evaluated in the same pass by a second copy of the network.
    assert results[model_fn_lib.RAW_WEIGHTS_PREFIX + model_fn_lib.EVAL_CROSS_ENTROPY_KEY] == \
        pytest.approx(_nll(_raw_weight_logits(tmp_path / "model", images), labels),
                      rel=TOLERANCE[dtype])


def _summaries(model_dir, tag):
    """(step, value) of every scalar summary `tag` the training wrote into `model_dir`."""
    values = []
    for path in tf.io.gfile.glob(os.path.join(str(model_dir), "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [(event.step, tf.make_ndarray(value.tensor) if value.HasField("tensor")
                        else value.simple_value)
                       for value in event.summary.value if value.tag == tag]
    return values


class _OneStepWatched(tf.estimator.SessionRunHook):
    """Reads every global variable before and after the first training step, then stops (a skipped
    step does not advance the global step, so `steps=1` would train on until one is applied)."""

    def begin(self):
        # Read ops made now: the graph is final once the session exists.
        self._variables = {variable.op.name: tf.identity(variable)
                           for variable in tf.compat.v1.global_variables()}
        self.before = self.after = None

    def after_create_session(self, session, coord):
        del coord
        self.before = session.run(self._variables)

    def after_run(self, run_context, run_values):
        del run_values
        self.after = run_context.session.run(self._variables)
        run_context.request_stop()


def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_halves_the_loss_scale(tmp_path):
    # A dynamic loss scale of 2**100 is finite in float32 (where the loss is) but makes every
    # float16 gradient infinite: the step must change no weight and halve the scale.
    flag_values = _flags(model_dir=tmp_path, use_synthetic_data=True, num_cpu_replicas=2,
                         dtype="fp16", moving_average_decay=0.0)
    placement = imagenet_main.make_placement("mirrored", 0, 2, None, {})
    model_config = dataclasses.replace(
        imagenet_main.make_model_config(flag_values, flag_values.batch_size),
        initial_loss_scale=2.0 ** 100)
    estimator = tf.estimator.Estimator(
        model_fn_lib.model_fn, config=imagenet_main.make_run_config(flag_values, placement),
        params={"model_config": model_config, "model_builder": tiny_network.tiny_network})
    watched = _OneStepWatched()
    estimator.train(lambda: input_pipeline.synthetic_input_fn(
        True, 2, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, dtype=tf.float16), hooks=[watched])

    (scale,) = [name for name in watched.before if name.endswith("current_loss_scale")]
    assert watched.before[scale] == 2.0 ** 100 and watched.after[scale] == 2.0 ** 99
    with tf.Graph().as_default():
        model = tiny_network.tiny_network(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
        trained = [w.op.name for w in model.trainable_weights]
        statistics = [w.op.name for w in model.non_trainable_weights]
    unchanged = trained + [name + "/Momentum" for name in trained] + ["global_step"]
    assert set(unchanged + statistics) <= set(watched.before)
    for name in unchanged:
        np.testing.assert_array_equal(watched.after[name], watched.before[name], err_msg=name)
    # Batch norm's moving statistics come from the forward pass, which was finite (the loss is
    # checked): they take the batch in, as on any step.
    for name in statistics:
        assert np.isfinite(watched.after[name]).all(), name
    # The scale the step used is in the summaries.
    assert (0, 2.0 ** 100) in [(step, float(value))
                               for step, value in _summaries(tmp_path, "loss_scale")]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
