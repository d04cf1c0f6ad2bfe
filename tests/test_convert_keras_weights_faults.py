"""Fault injection into convert_keras_weights: impossible class counts and a full disk are one line
with exit status 1, and nothing is left in --model_dir or beside it."""

import os
import sys

import pytest
import tensorflow as tf

from official.utils.errors import PipelineError
from official.xception import convert_keras_weights
from tests import process_fixtures


def _convert(*args, limit_file_size=None):
    return process_fixtures.run_module("official.xception.convert_keras_weights", *args,
                                       limit_file_size=limit_file_size)


@pytest.mark.parametrize("num_classes", [-5, 0])
def test_a_class_count_below_one_is_refused_before_reading_anything(tmp_path, num_classes):
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"never read")
    with pytest.raises(PipelineError, match=rf"^--num_classes={num_classes}: must be at least 1"):
        convert_keras_weights.convert(str(weights), str(tmp_path / "out"), num_classes)
    assert sorted(os.listdir(tmp_path)) == ["weights.h5"]


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path):
    # Keras's no-top Xception (random weights): an 80 MB checkpoint.
    weights = tmp_path / "no_top.h5"
    tf.keras.applications.Xception(weights=None, include_top=False, pooling="avg",
                                   input_shape=(71, 71, 3)).save_weights(str(weights))
    out = tmp_path / "out"
    finished = _convert(f"--keras_weights={weights}", f"--model_dir={out}",
                        limit_file_size=1 << 20)
    assert finished.returncode == 1, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == (
        f"error: a file size limit was reached while writing to --model_dir={out}: free space (or "
        "raise the limit) and re-run; nothing was written")
    assert sorted(os.listdir(tmp_path)) == ["no_top.h5"]



def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    weights = tmp_path / "no_top.h5"
    model = tf.keras.applications.Xception(weights=None, include_top=False, pooling="avg",
                                           input_shape=(71, 71, 3))
    kernel = model.get_layer("block1_conv1").kernel
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0, 0, 0]], [float("nan")]))
    model.save_weights(str(weights))
    with pytest.raises(PipelineError, match=r"block1_conv1/kernel holds NaN or infinite values"):
        convert_keras_weights.convert(str(weights), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["no_top.h5"]

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
