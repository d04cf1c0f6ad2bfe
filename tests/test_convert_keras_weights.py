"""Keras weights -> our checkpoint -> our network gives Keras's logits.

The oracle is tf.keras.applications.Xception itself, with random but non-trivial weights (batch-norm
statistics included) saved by Keras to .h5 and converted with the command line tool.
"""

import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from official.utils import provenance
from official.utils.errors import PipelineError
from official.xception import convert_keras_weights
from official.xception import run_record
from official.xception import xception_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize(model, seed):
    """Weights whose every tensor matters: no zero betas, unit gammas or fresh 0/1 moving statistics."""
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        shape, name = weight.shape, weight.name
        if "gamma" in name or "moving_variance" in name:
            values.append(rng.uniform(0.5, 1.5, shape))
        elif "beta" in name or "moving_mean" in name or "bias" in name:
            values.append(rng.normal(0.0, 0.2, shape))
        else:  # kernels: He-style scale keeps activations of order one through 36 layers
            fan_in = np.prod(shape[:-1]) if "depthwise" not in name else np.prod(shape[:2])
            values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))
    model.set_weights([v.astype(np.float32) for v in values])


def _photo_and_noise(image_size):
    """A real photograph (scikit-image's cat) and random images, scaled to [-1, 1]."""
    cat = tf.image.resize(skimage.data.chelsea()[None].astype(np.float32), [image_size, image_size])
    noise = np.random.default_rng(7).uniform(0, 255, [3, image_size, image_size, 3])
    return (np.concatenate([cat.numpy(), noise]) / 127.5 - 1.0).astype(np.float32)


def _convert(h5_path, model_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "official.xception.convert_keras_weights",
         f"--keras_weights={h5_path}", f"--model_dir={model_dir}", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def _restore_and_run(model_dir, images, **model_kwargs):
    """Builds our network in a v1 graph, as the Estimator does, restores by name, and runs it."""
    with tf.Graph().as_default():
        model = xception_model.xception(image_size=images.shape[1], **model_kwargs)
        outputs = model(tf.constant(images), training=False)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            saver.restore(session, tf.train.latest_checkpoint(model_dir))
            return session.run(outputs), session.run(global_step)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """(h5 with the head, h5 without, Keras logits, Keras pooled features, images) at 299x299."""
    directory = tmp_path_factory.mktemp("keras")
    images = _photo_and_noise(299)
    full = tf.keras.applications.Xception(weights=None, classifier_activation=None)
    _randomize(full, seed=1)
    full.save_weights(str(directory / "full.h5"))
    logits = full.predict(images, verbose=0)
    no_top = tf.keras.applications.Xception(weights=None, include_top=False, pooling="avg")
    no_top.set_weights(full.get_weights()[:-2])
    no_top.save_weights(str(directory / "no_top.h5"))
    features = no_top.predict(images, verbose=0)
    return directory / "full.h5", directory / "no_top.h5", logits, features, images


def _assert_same_predictions(ours, keras_logits):
    assert np.abs(keras_logits).max() > 1.0, "weights too small for a meaningful comparison"
    np.testing.assert_allclose(ours, keras_logits, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-ours, axis=1)[:, :5], np.argsort(-keras_logits, axis=1)[:, :5])


@pytest.fixture(scope="module")
def converted_full(keras_files, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("converted") / "ckpt"
    result = _convert(keras_files[0], model_dir)
    assert result.returncode == 0, result.stderr
    return model_dir, result.stdout


def test_full_file_converts_to_keras_logits(keras_files, converted_full):
    _, _, keras_logits, _, images = keras_files
    model_dir, stdout = converted_full
    assert "converted 236 tensors (22,910,480 values)" in stdout
    assert "-> block13_residual_conv" in stdout
    logits, global_step = _restore_and_run(model_dir, images)
    assert global_step == 0
    _assert_same_predictions(logits, keras_logits)


def test_the_conversion_records_its_source_files_digest(keras_files, converted_full):
    model_dir, stdout = converted_full
    (record,) = provenance.read_records(run_record.record_path(str(model_dir)))
    with open(keras_files[0], "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    assert record["event"] == "convert_keras_weights"
    assert record["source"] == {"path": str(keras_files[0]), "sha256": digest, "num_classes": 1000}
    assert f"converted {keras_files[0]} (sha256 {digest})" in run_record.describe(record)[1]
    assert f"provenance: {model_dir}/provenance.jsonl" in stdout


def test_checkpoint_holds_exactly_the_networks_variables(converted_full):
    with tf.Graph().as_default():
        model = xception_model.xception(image_size=71)
        expected = {w.name.split(":")[0]: tuple(w.shape) for w in model.weights}
    stored = dict(tf.train.list_variables(str(converted_full[0])))
    assert stored.pop("global_step") == []
    assert {name: tuple(shape) for name, shape in stored.items()} == expected
    assert "block2_residual_bn/moving_variance" in stored


def test_no_top_file_converts_to_keras_features(keras_files, tmp_path):
    _, no_top_h5, _, keras_features, images = keras_files
    result = _convert(no_top_h5, tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    assert "converted 234 tensors (20,861,480 values)" in result.stdout
    features, _ = _restore_and_run(tmp_path / "ckpt", images, include_top=False)
    np.testing.assert_allclose(features, keras_features, rtol=0, atol=1e-4)


def test_1001_classes_adds_a_zero_background_class(keras_files, tmp_path):
    full_h5, _, keras_logits, _, images = keras_files
    result = _convert(full_h5, tmp_path / "ckpt", "--num_classes=1001")
    assert result.returncode == 0, result.stderr
    assert "1000 -> 1001 classes" in result.stdout
    logits, _ = _restore_and_run(tmp_path / "ckpt", images, num_classes=1001)
    np.testing.assert_array_equal(logits[:, 0], 0.0)
    _assert_same_predictions(logits[:, 1:], keras_logits)


def _copy_with(source, target, edit):
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(src.read())
    with h5py.File(target, "r+") as handle:
        edit(handle)
    return target


def _shrink_first_kernel(handle):
    del handle["block1_conv1/block1_conv1/kernel:0"]
    handle["block1_conv1"].create_dataset("block1_conv1/kernel:0", data=np.zeros([3, 3, 3, 16]))


def _write_garbage(target):
    target.write_bytes(b"not hdf5 at all")
    return target


def _drop_last_layer(handle):
    names = list(handle.attrs["layer_names"])
    handle.attrs["layer_names"] = [n for n in names if n not in ("block14_sepconv2_bn", b"block14_sepconv2_bn")]


@pytest.mark.parametrize("make_bad_file, num_classes, message", [
    (lambda src, dst: _copy_with(src, dst, _shrink_first_kernel), None,
     "shape mismatch for block1_conv1/kernel: the file has (3, 3, 3, 16), the network needs (3, 3, 3, 32)"),
    (lambda src, dst: _copy_with(src, dst, _drop_last_layer), None,
     "not a Keras Xception: missing layers ['block14_sepconv2_bn']"),
    (lambda src, dst: _write_garbage(dst), None, "not a readable HDF5 file"),
    (lambda src, dst: src, 10, "shape mismatch for predictions/kernel: the file has (2048, 1000), the network needs (2048, 10)"),
])
def test_wrong_file_is_refused_and_nothing_written(keras_files, tmp_path, make_bad_file, num_classes,
                                                   message):
    bad = make_bad_file(keras_files[0], tmp_path / "bad.h5")
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as error:
        convert_keras_weights.convert(str(bad), str(out), num_classes)
    assert str(error.value).startswith(f"--keras_weights={bad}") and message in str(error.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert")]


def test_a_non_xception_keras_file_is_refused_in_one_line(tmp_path):
    inputs = tf.keras.Input([4])
    tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="dense")(inputs)).save_weights(
        str(tmp_path / "dense.h5"))
    result = _convert(tmp_path / "dense.h5", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: --keras_weights={tmp_path / 'dense.h5'}: not a Keras Xception")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_non_empty_model_dir_is_refused(keras_files, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint").write_text("model_checkpoint_path: 'model.ckpt-100'\n")
    with pytest.raises(PipelineError, match="is not empty"):
        convert_keras_weights.convert(str(keras_files[0]), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["checkpoint"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
