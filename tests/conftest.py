"""Fixtures shared by several test files."""

import fcntl
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from official.xception import export
from tests import export_fixtures

# The files whose tests take minutes (the demo end to end, the real Slurm relaunch). pytest-xdist hands
# out whole files in collection order; started last, each would run alone at the end while the other
# process idles, so they are collected first.
_LONGEST_FILES = ("test_run_imagenet.py", "test_slurm.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONGEST_FILES.index(name) if name in _LONGEST_FILES else len(_LONGEST_FILES)
    items.sort(key=rank)  # stable: every other test keeps its order


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A checkpoint with Polyak averages (export_fixtures) and its SavedModel export, for reading only.

    Built once per run: pytest-xdist's worker processes share it under the run's base directory (a
    lock lets the first build it; the file naming the export is written last, so a build cut short is
    rebuilt)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base directories are folders of the run's
    shared, built = root / "exported", root / "exported" / "built.json"
    with open(root / "exported.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(shared, ignore_errors=True)
            (shared / "model").mkdir(parents=True)
            raw, averaged = export_fixtures.write_checkpoint(str(shared / "model"))
            np.savez(shared / "weights.npz", *raw, *averaged)
            path, averaged_count = export.export_saved_model(
                str(shared / "model"), str(shared / "export"),
                num_classes=export_fixtures.NUM_CLASSES, image_size=export_fixtures.IMAGE_SIZE,
                label_offset=1, class_names=export_fixtures.CLASS_NAMES)
            built.write_text(json.dumps({"path": path, "averaged_count": averaged_count}))
    record = json.loads(built.read_text())
    with np.load(shared / "weights.npz") as arrays:
        weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    half = len(weights) // 2
    return {"path": record["path"], "base": shared / "export", "model_dir": shared / "model",
            "raw": weights[:half], "averaged": weights[half:],
            "averaged_count": record["averaged_count"], "loaded": tf.saved_model.load(record["path"])}
