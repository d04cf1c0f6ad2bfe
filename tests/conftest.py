"""Fixtures shared by several test files."""

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
    """A checkpoint with Polyak averages (export_fixtures) and its SavedModel export."""
    model_dir = tmp_path_factory.mktemp("model")
    raw, averaged = export_fixtures.write_checkpoint(str(model_dir))
    export_base = tmp_path_factory.mktemp("export")
    path, averaged_count = export.export_saved_model(
        str(model_dir), str(export_base), num_classes=export_fixtures.NUM_CLASSES,
        image_size=export_fixtures.IMAGE_SIZE, label_offset=1, class_names=export_fixtures.CLASS_NAMES)
    return {"path": path, "base": export_base, "model_dir": model_dir, "raw": raw,
            "averaged": averaged, "averaged_count": averaged_count,
            "loaded": tf.saved_model.load(path)}
