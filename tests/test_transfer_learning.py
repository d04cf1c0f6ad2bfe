"""Fine-tuning the full Xception from converted Keras weights into a 5-class problem."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import convert_keras_weights
from official.xception import imagenet_main
from tests import main_flags
from tests import record_fixtures

NUM_CLASSES = 5
HEAD = {"predictions/kernel", "predictions/bias"}


@pytest.fixture(scope="module")
def keras_checkpoint(tmp_path_factory):
    """Keras Xception weights (moving statistics made non-trivial) converted to our checkpoint."""
    directory = tmp_path_factory.mktemp("keras")
    keras_model = tf.keras.applications.Xception(weights=None)
    rng = np.random.default_rng(0)
    keras_model.set_weights([
        rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if "moving_variance" in w.name
        else rng.normal(0, 0.1, w.shape).astype(np.float32) if "moving_mean" in w.name
        else w.numpy() for w in keras_model.weights])
    keras_model.save_weights(str(directory / "xception.h5"))
    convert_keras_weights.convert(str(directory / "xception.h5"), str(directory / "converted"))
    return str(directory / "converted")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    labels = list(range(1, NUM_CLASSES + 1))
    record_fixtures.write_labelled_split(directory, "train", labels * 2, num_shards=1, seed=1)
    record_fixtures.write_labelled_split(directory, "validation", labels, num_shards=1, seed=2)
    return directory


def _train_one_step(data_dir, model_dir, checkpoint, **values):
    settings = dict(
        data_dir=data_dir, model_dir=model_dir, pretrained_model_checkpoint_path=checkpoint,
        num_classes=NUM_CLASSES, image_size=71, batch_size=4, max_train_steps=1,
        train_examples=2 * NUM_CLASSES, eval_examples=NUM_CLASSES, num_gpus=0, seed=3,
        dropout_rate=0.0, moving_average_decay=0.0, base_learning_rate=0.1, base_batch_size=4,
        # The whole 40x48 image, unflipped, colours untouched: every run sees exactly the same batch.
        crop_area_range="1.0,1.0", crop_aspect_ratio_range="0.75,1.34", random_flip=False,
        color_distortion=False)
    imagenet_main.run(main_flags.parse(settings, **values))
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.endswith("/Momentum")}


def _pretrained(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_fine_tune_trains_only_the_new_head(keras_checkpoint, data_dir, tmp_path):
    before = _pretrained(keras_checkpoint)
    after = _train_one_step(data_dir, tmp_path, keras_checkpoint, fine_tune=True)
    assert after["predictions/kernel"].shape == (2048, NUM_CLASSES)
    assert after["predictions/bias"].shape == (NUM_CLASSES,)
    base = set(before) - HEAD - {"global_step"}
    assert base and base <= set(after)
    for name in base:  # weights and batch-norm statistics alike
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_full_fine_tuning_moves_the_base_and_the_multiplier_scales_its_steps(
        keras_checkpoint, data_dir, tmp_path):
    before = _pretrained(keras_checkpoint)
    full = _train_one_step(data_dir, tmp_path / "full", keras_checkpoint)
    slow = _train_one_step(data_dir, tmp_path / "slow", keras_checkpoint,
                           pretrained_learning_rate_multiplier=0.1)
    for name in ("block1_conv1/kernel", "block7_sepconv2/depthwise_kernel"):
        full_step = full[name] - before[name]
        assert np.abs(full_step).max() > 0, name
        # atol: a few float32 ulps of the weights themselves, which the subtraction exposes.
        np.testing.assert_allclose(slow[name] - before[name], 0.1 * full_step, rtol=1e-3,
                                   atol=1e-7, err_msg=name)
    # Batch norm runs in training mode: its moving statistics follow the new data.
    assert not np.allclose(full["block1_conv1_bn/moving_mean"], before["block1_conv1_bn/moving_mean"])
    for name in HEAD:  # the head's steps are not scaled
        np.testing.assert_allclose(slow[name], full[name], rtol=1e-4, atol=1e-6)


def test_the_multiplier_is_refused_where_it_means_nothing(keras_checkpoint, data_dir, tmp_path):
    with pytest.raises(PipelineError, match="applies to full fine-tuning"):
        _train_one_step(data_dir, tmp_path, keras_checkpoint, fine_tune=True,
                        pretrained_learning_rate_multiplier=0.1)
    with pytest.raises(PipelineError, match="needs --optimizer=momentum or nesterov"):
        _train_one_step(data_dir, tmp_path, keras_checkpoint, optimizer="rmsprop",
                        pretrained_learning_rate_multiplier=0.1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
