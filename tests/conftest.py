"""Fixtures shared by several test files."""

import pytest
import tensorflow as tf

from official.xception import export
from tests import export_fixtures


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
