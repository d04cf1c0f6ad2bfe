"""The SavedModel: signatures, dynamic batch, averaged weights, exactly the eval preprocessing."""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import export
from official.xception import preprocessing
from tests import export_fixtures
from tests import record_fixtures
from tests import tiny_network

SIZE = export_fixtures.IMAGE_SIZE
CLASS_NAMES = export_fixtures.CLASS_NAMES


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(3)
    pixels = [record_fixtures.random_photo(rng, 90 + 7 * i, 120 - 5 * i) for i in range(3)]
    return {"jpeg": [record_fixtures.encode_image(p, "JPEG") for p in pixels],
            "png": [record_fixtures.encode_image(p, "PNG") for p in pixels]}


def _eval_images(encoded):
    return tf.stack([preprocessing.preprocess_for_eval(tf.constant(b), SIZE) for b in encoded])


def test_signatures_names_dtypes_and_dynamic_batch(exported):
    signatures = exported["loaded"].signatures
    assert set(signatures) == {"serving_default", "predict_images"}
    (bytes_spec,) = signatures["serving_default"].structured_input_signature[1].values()
    assert bytes_spec.name == "image_bytes" and bytes_spec.dtype == tf.string
    assert bytes_spec.shape.as_list() == [None]
    (images_spec,) = signatures["predict_images"].structured_input_signature[1].values()
    assert images_spec.name == "images" and images_spec.dtype == tf.float32
    assert images_spec.shape.as_list() == [None, SIZE, SIZE, 3]
    for signature in signatures.values():
        outputs = signature.structured_outputs
        assert {name: spec.dtype for name, spec in outputs.items()} == {
            "classes": tf.int64, "class_names": tf.string, "probabilities": tf.float32,
            "logits": tf.float32, "top_5_classes": tf.int64, "top_5_class_names": tf.string,
            "top_5_probabilities": tf.float32}
        assert outputs["logits"].shape.as_list() == [None, export_fixtures.NUM_CLASSES]


def test_a_checkpoint_with_the_averages_of_only_some_weights_is_an_error(exported, tmp_path):
    # The shared checkpoint's files, copied (writing another full Xception one costs more than the
    # test); the copy gets its own "checkpoint" state, whose paths would name the original.
    checkpoint = str(tmp_path / "model" / f"model.ckpt-{export_fixtures.GLOBAL_STEP}")
    shutil.copytree(exported["model_dir"], tmp_path / "model",
                    ignore=shutil.ignore_patterns("checkpoint"))
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path / "model"), checkpoint)
    export_fixtures.rewrite_checkpoint_without(checkpoint, "predictions/bias/ExponentialMovingAverage")
    with pytest.raises(PipelineError, match=r"moving averages of only 155 of 156 trainable variables "
                                            r"\(not of predictions/bias\)") as raised:
        export.export_saved_model(str(tmp_path / "model"), str(tmp_path / "export"),
                                  num_classes=export_fixtures.NUM_CLASSES, image_size=SIZE)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "export").exists()


def test_export_uses_the_moving_averages(exported, photos):
    images = _eval_images(photos["jpeg"])
    outputs = exported["loaded"].signatures["predict_images"](images=images)
    expected = export_fixtures.model_with(exported["averaged"])(images, training=False)
    raw = export_fixtures.model_with(exported["raw"])(images, training=False)
    assert exported["averaged_count"] == 156  # 236 weights but the 80 batch-norm moving statistics
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(outputs["logits"], raw, atol=1e-3)
    np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(expected), atol=1e-6)
    np.testing.assert_array_equal(outputs["classes"], np.argmax(expected, axis=1))
    top_5 = np.argsort(-expected.numpy(), axis=1)[:, :5]
    np.testing.assert_array_equal(outputs["top_5_classes"], top_5)
    names = np.array([name.encode() for name, _ in CLASS_NAMES])
    np.testing.assert_array_equal(outputs["class_names"], names[np.argmax(expected, axis=1)])
    np.testing.assert_array_equal(outputs["top_5_class_names"], names[top_5])


def test_raw_weights_on_request(exported, tmp_path, photos):
    path, averaged = export.export_saved_model(
        str(exported["model_dir"]), str(tmp_path), num_classes=export_fixtures.NUM_CLASSES,
        image_size=SIZE, use_moving_averages=False)
    assert averaged == 0
    images = _eval_images(photos["jpeg"])
    logits = tf.saved_model.load(path).signatures["predict_images"](images=images)["logits"]
    expected = export_fixtures.model_with(exported["raw"])(images, training=False)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_image_bytes_go_through_the_eval_preprocessing(exported, photos, image_format):
    encoded = photos[image_format]
    served = exported["loaded"].signatures["serving_default"](image_bytes=tf.constant(encoded))
    expected = exported["loaded"].signatures["predict_images"](images=_eval_images(encoded))
    np.testing.assert_allclose(served["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert served["classes"].shape == (len(encoded),)


def test_a_corrupt_image_is_an_error_and_the_model_keeps_serving(exported, photos):
    serve = exported["loaded"].signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image"):
        serve(image_bytes=tf.constant([photos["jpeg"][0], b"\xff\xd8 truncated garbage"]))
    assert serve(image_bytes=tf.constant(photos["jpeg"][:1]))["classes"].shape == (1,)


def test_assets_record_classes_and_conventions(exported):
    assert export.read_class_names(exported["path"]) == CLASS_NAMES
    info = export.read_export_info(exported["path"])
    assert info["label_offset"] == 1 and info["image_size"] == SIZE
    assert info["num_classes"] == export_fixtures.NUM_CLASSES
    assert info["global_step"] == export_fixtures.GLOBAL_STEP
    assert os.path.basename(exported["path"]).isdigit()
    assert not [p for p in os.listdir(exported["base"]) if p.startswith(".export")]


def test_wrong_class_count_is_a_clear_error(exported, tmp_path):
    with pytest.raises(PipelineError, match=r"predictions/kernel\S* has shape \(2048, 5\).*--num_classes"):
        export.export_saved_model(str(exported["model_dir"]), str(tmp_path), num_classes=7,
                                  image_size=SIZE)
    assert os.listdir(tmp_path) == []


def test_saved_model_cli_show_and_run(exported, tmp_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", exported["path"]],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "signature_def['predict_images']" in shown.stdout
    assert "signature_def['serving_default']" in shown.stdout
    np.save(tmp_path / "images.npy", np.zeros([2, SIZE, SIZE, 3], np.float32))
    ran = subprocess.run(
        [cli, "run", "--dir", exported["path"], "--tag_set", "serve", "--signature_def",
         "predict_images", "--inputs", f"images={tmp_path / 'images.npy'}"],
        capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "top_5_classes" in ran.stdout



@pytest.mark.parametrize("shape, fill, message", [
    ([1, SIZE - 7, SIZE - 7, 3], 0.0, "images of shape"),
    ([2, SIZE, SIZE, 1], 0.0, "images of shape"),
    ([1, SIZE, SIZE, 3], np.nan, "finite pixel values"),
    ([1, SIZE, SIZE, 3], np.inf, "finite pixel values"),
])
def test_predict_images_refuses_other_shapes_and_non_finite_pixels(exported, shape, fill, message):
    # The signature's function as served (TF Serving and saved_model_cli call it without Python's
    # shape check).
    function = exported["loaded"].predict_images.get_concrete_function()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        tf.raw_ops.PartitionedCall(args=[tf.fill(shape, tf.constant(fill, tf.float32))]
                                   + function.captured_inputs, Tout=[o.dtype for o in
                                                                     function.outputs],
                                   f=function)


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(tmp_path):
    prefix = str(tmp_path / "model" / "model.ckpt-1")
    with tf.Graph().as_default():
        model = tiny_network.tiny_network(num_classes=export_fixtures.NUM_CLASSES, image_size=SIZE)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver({v.op.name: v for v in model.weights}).save(session, prefix)
    base = tmp_path / "export"
    dead = base / f".export-{socket.gethostname()}-999999999-abc"
    alive = base / f".export-{socket.gethostname()}-{os.getpid()}-abc"
    other_host = base / ".export-otherhost-1-abc"
    for folder in (dead, alive, other_host):
        (folder / "saved_model").mkdir(parents=True)
    export.export_saved_model(prefix, str(base), num_classes=export_fixtures.NUM_CLASSES,
                              image_size=SIZE, model_builder=tiny_network.tiny_network)
    assert not dead.exists() and alive.exists() and other_host.exists()

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
