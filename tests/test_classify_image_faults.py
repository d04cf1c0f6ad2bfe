"""Fault injection into classify_image and the export's serving signature: a wrong folder or a damaged
export is one line with exit status 1; an empty request returns empty outputs."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import classify_image
from tests import export_fixtures
from tests import record_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _classify(*args):
    return subprocess.run([sys.executable, "-m", "official.xception.classify_image", *args],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=300)


def test_the_export_base_names_the_newest_version_in_one_line(exported, tmp_path):
    image = tmp_path / "image.jpg"
    image.write_bytes(b"unused")
    finished = _classify(f"--saved_model_dir={exported['base']}", str(image))
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == (
        f"error: --saved_model_dir={exported['base']} is the parent of 1 export, not one: give a version "
        f"directory, e.g. the newest: --saved_model_dir={exported['path']}")


def test_a_folder_that_is_not_a_saved_model_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="is not a SavedModel"):
        classify_image.classify(str(tmp_path), [])


def test_a_corrupt_export_info_is_one_line_and_left_as_it_is(exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported["path"], copy)
    info = copy / "assets.extra" / "export_info.json"
    info.write_bytes(b'{"num_classes": 5, "label_')
    with pytest.raises(PipelineError, match="export_info.json is not valid JSON"):
        classify_image.classify(str(copy), [])
    assert info.read_bytes() == b'{"num_classes": 5, "label_'



def test_a_truncated_variables_file_is_one_line_and_left_as_it_is(exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported["path"], copy)
    (data,) = (copy / "variables").glob("variables.data-*")
    content = data.read_bytes()
    data.write_bytes(content[:len(content) // 2])  # an interrupted copy
    with pytest.raises(PipelineError, match=r"cannot be loaded .*export the checkpoint again"):
        classify_image.classify(str(copy), [])
    assert data.read_bytes() == content[:len(content) // 2]


def test_a_bad_image_fails_alone_and_the_others_are_classified(exported, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(record_fixtures.encode_image(np.full([80, 90, 3], 120, np.uint8)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    finished = _classify(f"--saved_model_dir={exported['path']}", str(bad), str(tmp_path / "gone"),
                         str(good))
    assert finished.returncode == 1 and "Traceback" not in finished.stderr
    assert finished.stdout.splitlines()[0] == str(good) and len(finished.stdout.splitlines()) == 6
    assert [line for line in finished.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {bad} is not a readable JPEG, PNG, GIF or BMP image",
        f"error: cannot read image {tmp_path / 'gone'}: No such file or directory",
        "error: 2 of 3 images could not be classified (above)"]

@pytest.mark.parametrize("signature, request_inputs", [
    ("serving_default", lambda: {"image_bytes": tf.constant([], tf.string)}),
    ("predict_images", lambda: {"images": tf.zeros([0] + [export_fixtures.IMAGE_SIZE] * 2 + [3])}),
])
def test_an_empty_request_returns_empty_outputs(exported, signature, request_inputs):
    outputs = exported["loaded"].signatures[signature](**request_inputs())
    assert outputs["logits"].shape == (0, export_fixtures.NUM_CLASSES)
    assert outputs["top_5_classes"].shape == (0, 5)
    assert outputs["top_5_class_names"].shape == (0, 5)
    assert outputs["classes"].shape == (0,)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
