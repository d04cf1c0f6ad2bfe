"""The network against the facts of docs/DESIGN.md §2 and against
tf.keras.applications.Xception."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import xception_model


@pytest.fixture(scope="module")
def keras_xception():
    return tf.keras.applications.Xception(weights=None)


def _weight_shapes(model):
    return [(tuple(w.shape), w.trainable) for w in model.weights]


def test_parameter_counts_with_and_without_head():
    full = xception_model.xception()
    assert full.count_params() == 22_910_480
    assert sum(int(np.prod(w.shape)) for w in full.trainable_weights) == 22_855_952
    assert len(full.weights) == 236
    no_top = xception_model.xception(include_top=False)
    assert no_top.count_params() == 20_861_480
    assert len(no_top.weights) == 234


def test_layers_and_weights_equal_keras_in_order(keras_xception):
    ours = xception_model.xception()
    assert _weight_shapes(ours) == _weight_shapes(keras_xception)
    keras_layers = [layer for layer in keras_xception.layers if layer.weights]
    our_layers = [layer for layer in ours.layers if layer.weights]
    residual_names = {f"block{b}_residual_{kind}" for b in xception_model.RESIDUAL_BLOCKS
                      for kind in ("conv", "bn")}
    for keras_layer, our_layer in zip(keras_layers, our_layers, strict=True):
        assert type(keras_layer) is type(our_layer)
        if our_layer.name not in residual_names:
            assert our_layer.name == keras_layer.name
        keras_config, our_config = keras_layer.get_config(), our_layer.get_config()
        for key in ("filters", "kernel_size", "strides", "padding", "use_bias", "units", "momentum",
                    "epsilon", "center", "scale", "depth_multiplier"):
            assert our_config.get(key) == keras_config.get(key), (our_layer.name, key)


@pytest.mark.parametrize("image_size, block1, block4, block13", [
    (299, 147, 19, 10),
    (71, 33, 5, 3),
])
def test_output_and_end_point_shapes(image_size, block1, block4, block13):
    model = xception_model.xception(image_size=image_size)
    end_points = xception_model.end_point_model(model)
    outputs = end_points(tf.zeros([2, image_size, image_size, 3]), training=False)
    assert set(outputs) == {f"block{i}" for i in range(1, 15)} | {"pooled", "logits"}
    assert outputs["block1"].shape == (2, block1, block1, 64)
    assert outputs["block4"].shape == (2, block4, block4, 728)
    assert outputs["block12"].shape == (2, block4, block4, 728)
    assert outputs["block13"].shape == (2, block13, block13, 1024)
    assert outputs["block14"].shape == (2, block13, block13, 2048)
    assert outputs["pooled"].shape == (2, 2048)
    assert outputs["logits"].shape == (2, 1000)
    assert model(tf.zeros([1, image_size, image_size, 3])).shape == (1, 1000)


def test_end_points_share_the_models_weights():
    model = xception_model.xception(image_size=71, num_classes=7)
    images = tf.random.uniform([2, 71, 71, 3], -1, 1, seed=1)
    logits = model(images, training=False)
    np.testing.assert_allclose(xception_model.end_point_model(model)(images)["logits"], logits)


def test_1001_classes_and_no_top_features():
    assert xception_model.xception(image_size=71, num_classes=1001).output.shape == (None, 1001)
    assert xception_model.xception(image_size=71, include_top=False).output.shape == (None, 2048)
    feature_map = xception_model.xception(image_size=71, include_top=False, pooling=None)
    assert feature_map.output.shape == (None, 3, 3, 2048)


def test_max_pooling_is_the_maximum_of_the_last_block():
    model = xception_model.xception(image_size=71, pooling="max")
    outputs = xception_model.end_point_model(model)(tf.random.uniform([2, 71, 71, 3], -1, 1, seed=2))
    np.testing.assert_allclose(outputs["pooled"], tf.reduce_max(outputs["block14"], axis=[1, 2]))


def test_dropout_only_in_training():
    plain = xception_model.xception(image_size=71)
    with_dropout = xception_model.xception(image_size=71, dropout_rate=0.5)
    with_dropout.set_weights(plain.get_weights())
    images = tf.random.uniform([4, 71, 71, 3], -1, 1, seed=3)
    np.testing.assert_allclose(with_dropout(images, training=False), plain(images, training=False),
                               rtol=1e-6, atol=1e-6)
    features = xception_model.end_point_model(plain)(images, training=True)["pooled"]
    head = with_dropout.get_layer(xception_model.HEAD_LAYER_NAME)
    dropped = with_dropout.get_layer("dropout")(features, training=True)
    # Half the features are zeroed and the rest doubled, so the head sees a different input.
    zero_fraction = float(tf.reduce_mean(tf.cast(tf.equal(dropped, 0.0), tf.float32)))
    assert 0.4 < zero_fraction < 0.6
    assert not np.allclose(head(dropped), head(features))


@pytest.mark.parametrize("compute_dtype, tolerance", [("bfloat16", 0.25), ("float16", 0.02)])
def test_mixed_precision_keeps_float32_variables_and_outputs(compute_dtype, tolerance):
    reference = xception_model.xception(image_size=71)
    mixed = xception_model.xception(image_size=71, compute_dtype=compute_dtype)
    mixed.set_weights(reference.get_weights())
    assert {w.dtype for w in mixed.weights} == {tf.float32}
    assert mixed.get_layer("block5_sepconv1").compute_dtype == compute_dtype
    images = tf.random.uniform([2, 71, 71, 3], -1, 1, seed=4)
    logits = mixed(images, training=False)
    assert logits.dtype == tf.float32
    expected = reference(images, training=False)
    scale = float(tf.reduce_max(tf.abs(expected)))
    assert float(tf.reduce_max(tf.abs(logits - expected))) <= tolerance * scale


def test_too_small_image_size_is_a_clear_error():
    with pytest.raises(PipelineError, match="at least 71"):
        xception_model.xception(image_size=64)


def test_channels_first_needs_a_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(PipelineError, match="channels_first needs a GPU"):
        xception_model.xception(data_format="channels_first")


def test_channels_first_graph_has_the_same_weights(monkeypatch):
    # The GPU check is the only thing stopping channels_first here; the graph itself builds on CPU.
    monkeypatch.setattr(xception_model, "check_data_format_supported", lambda data_format: None)
    nchw = xception_model.xception(data_format="channels_first", image_size=71)
    nhwc = xception_model.xception(image_size=71)
    assert _weight_shapes(nchw) == _weight_shapes(nhwc)
    assert nchw.get_layer("block1_conv1_bn").axis == [1]
    block14 = xception_model.end_point_model(nchw).output["block14"]
    assert block14.shape == (None, 2048, 3, 3)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
