"""evaluate_saved_model against accuracy computed by hand from the oracle network's logits."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import evaluate_saved_model
from official.xception import preprocessing
from tests import export_fixtures
from tests import record_fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 13
CORRECT = 7  # the first CORRECT images are labelled with the oracle's prediction, the others not


@pytest.fixture(scope="module")
def validation(exported, tmp_path_factory):
    """Shards of NUM_IMAGES validation images (labels 1..5), and the oracle's predicted classes."""
    rng = np.random.default_rng(11)
    encoded = [record_fixtures.encode_image(record_fixtures.random_photo(rng, 80 + i, 100 - i))
               for i in range(NUM_IMAGES)]
    images = tf.stack([preprocessing.preprocess_for_eval(tf.constant(b), export_fixtures.IMAGE_SIZE)
                       for b in encoded])
    logits = export_fixtures.model_with(exported["averaged"])(images, training=False).numpy()
    predicted = logits.argmax(axis=1)
    classes = np.where(np.arange(NUM_IMAGES) < CORRECT, predicted,
                       (predicted + 1) % export_fixtures.NUM_CLASSES)
    examples = [record_fixtures.make_example(b, int(c) + 1, 80 + i, 100 - i,
                                             filename=f"ILSVRC2012_val_{i + 1:08d}.JPEG")
                for i, (b, c) in enumerate(zip(encoded, classes))]
    data_dir = tmp_path_factory.mktemp("shards")
    record_fixtures.write_shards(str(data_dir), "validation", examples, num_shards=3)
    return {"data_dir": str(data_dir), "classes": classes, "predicted": predicted}


def test_top_1_counts_every_image_once(exported, validation):
    # A batch size that does not divide the image count: the last partial batch counts too.
    result = evaluate_saved_model.evaluate(exported["path"], validation["data_dir"], batch_size=5)
    assert result["examples"] == NUM_IMAGES and result["excluded"] == 0
    assert result["top_1"] == pytest.approx(CORRECT / NUM_IMAGES)
    assert result["top_5"] == 1.0  # five classes
    np.testing.assert_array_equal(result["tally"].examples,
                                  np.bincount(validation["classes"], minlength=5))


def test_blacklist_excludes_images_by_their_index(exported, validation, tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("1\n2\n\n9\n")  # two correct ones and one wrong one (1-based indices)
    result = evaluate_saved_model.evaluate(
        exported["path"], validation["data_dir"], batch_size=4,
        blacklist=evaluate_saved_model.read_blacklist(str(blacklist)))
    assert result["examples"] == NUM_IMAGES - 3 and result["excluded"] == 3
    assert result["top_1"] == pytest.approx((CORRECT - 2) / (NUM_IMAGES - 3))


def test_bad_blacklist_line_is_a_clear_error(tmp_path):
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("1\nILSVRC2012_val_00000002\n")
    with pytest.raises(PipelineError, match=r"blacklist.txt, line 2: .* is not a 1-based image index"):
        evaluate_saved_model.read_blacklist(str(blacklist))


def test_labels_outside_the_export_are_a_clear_error(exported, validation):
    with pytest.raises(PipelineError, match="outside .* check --label_offset"):
        evaluate_saved_model.evaluate(exported["path"], validation["data_dir"], label_offset=0)


def test_command_line_prints_figures_and_writes_per_class_csv(exported, validation, tmp_path):
    csv_path = tmp_path / "per_class.csv"
    result = subprocess.run(
        [sys.executable, "-m", "official.xception.evaluate_saved_model",
         f"--saved_model_dir={exported['path']}", f"--data_dir={validation['data_dir']}",
         "--batch_size=4", f"--per_class_csv={csv_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (f"top_1_accuracy={CORRECT / NUM_IMAGES:.4f} top_5_accuracy=1.0000 examples={NUM_IMAGES} "
            "excluded_by_blacklist=0") in result.stdout
    assert f"evaluated: {NUM_IMAGES}/{NUM_IMAGES} images (100.0%)" in result.stderr
    with open(csv_path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["synset"] for row in rows] == [name for name, _ in export_fixtures.CLASS_NAMES]
    counts = np.bincount(validation["classes"], minlength=5)
    assert [int(row["examples"]) for row in rows] == counts.tolist()
    hits = np.bincount(validation["classes"][:CORRECT], minlength=5)
    for row, count, hit in zip(rows, counts, hits):
        if count:
            assert float(row["top_1"]) == pytest.approx(hit / count, abs=1e-4)


def test_missing_shards_are_a_one_line_error(exported, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "official.xception.evaluate_saved_model",
         f"--saved_model_dir={exported['path']}", f"--data_dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no files match")
    assert "Traceback" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
