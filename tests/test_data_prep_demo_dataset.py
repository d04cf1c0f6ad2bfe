"""data_prep.make_demo_dataset: ImageNet layout, determinism, learnable classes, boxes around the object,
and the whole raw → CSV → shards path on its output."""

import filecmp
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep import bounding_boxes, builder, demo_dataset
from tests.data_prep_fixtures import read_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_classes=5, train_per_class=12, val_per_class=6, image_size=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    return root, demo_dataset.make_demo_dataset(root, **SMALL)


def load(path):
    return np.asarray(Image.open(path).convert("RGB"), np.float64)


def test_layout_matches_the_original_imagenet(demo):
    root, classes = demo
    synsets = [c.synset for c in classes]
    assert synsets == sorted(synsets) == [f"n{i:08d}" for i in range(1, 6)]
    assert open(os.path.join(root, "synsets.txt")).read().split() == synsets
    assert [line.split("\t")[0] for line in open(os.path.join(root, "metadata.txt")).read().splitlines()] == synsets
    for synset in synsets:
        assert sorted(os.listdir(os.path.join(root, "train", synset))) == sorted(
            f"{synset}_{i}.JPEG" for i in range(1, 13))
        assert len(os.listdir(os.path.join(root, "bboxes", synset))) == 12
    validation = sorted(os.listdir(os.path.join(root, "val")))
    assert validation == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 31)]
    labels = open(os.path.join(root, "val_labels.txt")).read().split()
    assert sorted(labels) == sorted(synsets * 6) and labels != sorted(labels)


def test_same_seed_same_bytes(demo, tmp_path):
    root, _ = demo
    demo_dataset.make_demo_dataset(str(tmp_path), **SMALL)
    comparison = filecmp.dircmp(root, str(tmp_path))
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    for sub in ("train/n00000003", "val", "bboxes/n00000005"):
        names = os.listdir(os.path.join(root, sub))
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(root, sub), str(tmp_path / sub), names, shallow=False)
        assert not mismatch and not errors


def colour_feature(path):
    """Mean colour of the pixels farthest from the image's median (background) colour."""
    pixels = load(path).reshape(-1, 3)
    distance = np.abs(pixels - np.median(pixels, axis=0)).sum(axis=1)
    return pixels[distance > np.percentile(distance, 85)].mean(axis=0)


def test_classes_are_learnable_by_a_trivial_classifier(demo):
    root, classes = demo
    centroids = np.array([np.mean([colour_feature(os.path.join(root, "train", c.synset, f"{c.synset}_{i}.JPEG"))
                                   for i in range(1, 13)], axis=0) for c in classes])
    labels = open(os.path.join(root, "val_labels.txt")).read().split()
    synsets = [c.synset for c in classes]
    correct = 0
    for number, synset in enumerate(labels, start=1):
        feature = colour_feature(os.path.join(root, "val", f"ILSVRC2012_val_{number:08d}.JPEG"))
        correct += synsets[np.argmin(np.abs(centroids - feature).sum(axis=1))] == synset
    assert correct / len(labels) >= 0.9


def test_boxes_enclose_the_object_and_flow_into_the_shards(demo, tmp_path):
    root, classes = demo
    stats = bounding_boxes.write_csv(str(tmp_path / "boxes.csv"), directory=os.path.join(root, "bboxes"), log=io.StringIO())
    assert stats.boxes_written == 60 and not stats.skipped_files
    image = load(os.path.join(root, "train", "n00000001", "n00000001_1.JPEG"))
    line = open(tmp_path / "boxes.csv").read().splitlines()[0].split(",")
    assert line[0] == "n00000001_1.JPEG"
    xmin, ymin, xmax, ymax = (round(float(v) * 64) for v in line[1:])
    red = (image[..., 0] > 150) & (image[..., 1] < 110) & (image[..., 2] < 110)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - xmin) <= 2 and abs(ys.min() - ymin) <= 2
    assert abs(xs.max() + 1 - xmax) <= 2 and abs(ys.max() + 1 - ymax) <= 2

    summary = builder.build(builder.BuildConfig(
        output_directory=str(tmp_path / "shards"), train_directory=os.path.join(root, "train"),
        validation_directory=os.path.join(root, "val"), validation_labels_file=os.path.join(root, "val_labels.txt"),
        imagenet_metadata_file=os.path.join(root, "metadata.txt"), bounding_box_file=str(tmp_path / "boxes.csv"),
        train_shards=2, validation_shards=1), log=io.StringIO())
    assert summary["splits"]["train"]["images_written"] == 60 and not summary["skipped_files"]
    records = [r for shard in read_shards(str(tmp_path / "shards"), "train") for r in shard]
    assert all(len(r["image/object/bbox/xmin"]) == 1 for r in records)
    assert {r["image/class/text"].decode() for r in records} == {c.text for c in classes}


def test_command_line_defaults_run_fast(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.make_demo_dataset", f"--output_dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(tmp_path / "val")) == 100 and len(os.listdir(tmp_path / "train")) == 5
    bad = subprocess.run([sys.executable, "-m", "data_prep.make_demo_dataset", f"--output_dir={tmp_path}",
                          "--num_classes=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --num_classes must be between 1 and 147, not 0"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
