"""official.xception.report on a run in progress: event files written by TensorFlow's summary writer
the way the Estimator writes them, a provenance record that says where the run ends."""

import sys

import pytest
import tensorflow as tf

from official.utils import provenance
from official.utils.errors import PipelineError
from official.xception import model_fn as model_fn_lib
from official.xception import report
from tests import report_tables


def _write_scalars(directory, tags_by_step):
    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default():
        for step, values in tags_by_step.items():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_a_run_in_progress_is_reported_as_far_as_it_got(tmp_path):
    # 24 training images in batches of 8 for 4 epochs: 12 steps, of which 6 are done.
    provenance.append_record(str(tmp_path), {
        "event": "start", "start_step": 0, "seed": 1,
        "flags": {"batch_size": 8, "train_examples": 24, "train_epochs": 4.0,
                  "max_train_steps": None}})
    _write_scalars(tmp_path, {step: {"cross_entropy_1": 2.0 / step, "learning_rate_1": 0.1,
                                     "global_step/sec": 2.0} for step in range(1, 7)})
    _write_scalars(tmp_path / "eval", {3: {model_fn_lib.TOP_1_KEY: 0.25,
                                           model_fn_lib.TOP_5_KEY: 0.75,
                                           model_fn_lib.EVAL_CROSS_ENTROPY_KEY: 1.5,
                                           model_fn_lib.EVAL_EXAMPLES_KEY: 9.0}})
    history = report.read_history(str(tmp_path))
    assert history.training["cross_entropy"][-1] == (6, pytest.approx(2.0 / 6))
    # images/s: global steps per second times the global batch of the record.
    assert [rate for _, rate in report._images_per_second(history)] == [16.0] * 6
    report_path, picture_path = report.write_report(str(tmp_path), str(tmp_path / "out"))
    text = open(report_path).read()
    assert "last summary at global step 6 of 12 (in progress or stopped)" in text
    # Without raw metrics (--noeval_raw_weights, or no averages) the table has no raw columns.
    assert report_tables.evaluation_rows(text) == [
        {"global step": "3", "epoch": "1.00", "top-1 %": "25.00", "top-5 %": "75.00",
         "cross-entropy": "1.5000", "examples": "9"}]
    report_tables.assert_picture(picture_path)


def test_a_directory_without_event_files_is_a_one_line_error(tmp_path):
    with pytest.raises(PipelineError, match="holds no TensorBoard event files yet"):
        report.write_report(str(tmp_path))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
