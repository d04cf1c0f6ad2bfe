"""Mixed precision through imagenet_main on {one device, two CPU replicas} x {fp32, bf16}: training,
evaluation on the averages of every trainable variable (by count in the log and by value against the
export) and export; and the fp16 training graph with loss scaling on two replicas (CPU has no float16 convolution
kernels to run it)."""

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
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


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
    ("bf16", 2, True),
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


class _GraphBuilt(Exception):
    pass


class _StopBeforeRunning(tf.estimator.SessionRunHook):
    """Keeps the finished training graph and stops before any session runs it."""

    graph = None

    def begin(self):
        self.graph = tf.compat.v1.get_default_graph()
        raise _GraphBuilt()


def test_fp16_training_graph_with_loss_scaling_builds_on_two_replicas(tmp_path):
    flag_values = _flags(model_dir=tmp_path, use_synthetic_data=True, num_cpu_replicas=2,
                         average_batch_norm_statistics=True)
    placement = imagenet_main.make_placement("mirrored", 0, 2, None, {})
    # make_model_config refuses fp16 without a GPU, before anything runs.
    model_config = dataclasses.replace(
        imagenet_main.make_model_config(flag_values, flag_values.batch_size), compute_dtype="float16")
    estimator = tf.estimator.Estimator(
        model_fn_lib.model_fn, config=imagenet_main.make_run_config(flag_values, placement),
        params={"model_config": model_config, "model_builder": tiny_network.tiny_network})
    hook = _StopBeforeRunning()
    with pytest.raises(_GraphBuilt):
        estimator.train(lambda: input_pipeline.synthetic_input_fn(
            True, 2, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, dtype=tf.float16),
                        steps=1, hooks=[hook])
    with hook.graph.as_default():
        names = {v.op.name for v in tf.compat.v1.global_variables()}
    with tf.Graph().as_default():
        model = tiny_network.tiny_network(num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
        trainable = {v.op.name for v in model.trainable_variables}
        everything = {v.op.name for v in model.weights}
    assert "current_loss_scale" in names
    assert {name + "/Momentum" for name in trainable} <= names
    assert {name + "/ExponentialMovingAverage" for name in everything} <= names
    convolutions = [op for op in hook.graph.get_operations() if op.type == "Conv2D"]
    assert convolutions and all(op.get_attr("T") == tf.float16 for op in convolutions)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
