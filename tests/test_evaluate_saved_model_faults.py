"""Fault injection into evaluate_saved_model: wrong or damaged exports, bad flags and blacklists, an
unwritable or failing --per_class_csv, corrupt shards (named, or skipped and counted on request).
Each failure is one line with exit status 1 and leaves existing files unchanged."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from official.utils.errors import PipelineError
from official.xception import evaluate_saved_model
from tests import fault_fixtures
from tests import process_fixtures
from tests import record_fixtures

NUM_IMAGES = 10


@pytest.fixture
def validation(tmp_path):
    """Two validation shards of NUM_IMAGES JPEGs (labels 1..5) and their build_summary.json."""
    rng = np.random.default_rng(3)
    examples = [record_fixtures.make_example(
        record_fixtures.encode_image(record_fixtures.random_photo(rng, 60, 80)), 1 + i % 5, 60, 80,
        filename=f"ILSVRC2012_val_{i + 1:08d}.JPEG") for i in range(NUM_IMAGES)]
    data_dir = tmp_path / "shards"
    record_fixtures.write_shards(str(data_dir), "validation", examples, num_shards=2)
    (data_dir / "build_summary.json").write_text(
        json.dumps({"settings": {"first_label": 1},
                    "classes": [{"label": label, "name": f"n{label}"} for label in range(1, 6)],
                    "splits": {"validation": {"images_written": NUM_IMAGES}}}))
    return str(data_dir)


def _main(*args, limit_file_size=None):
    return process_fixtures.run_module("official.xception.evaluate_saved_model", *args,
                                       limit_file_size=limit_file_size)


def _assert_one_line_error(finished, starts_with):
    assert finished.returncode == 1, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith("error: " + starts_with), last


def test_unwritable_per_class_csv_fails_before_evaluating(exported, validation, tmp_path):
    (tmp_path / "file").write_text("x")
    finished = _main(f"--saved_model_dir={exported['path']}", f"--data_dir={validation}",
                     f"--per_class_csv={tmp_path / 'file' / 'per_class.csv'}")
    _assert_one_line_error(finished, f"--per_class_csv (its directory)={tmp_path / 'file'} is a file")
    assert "evaluated:" not in finished.stderr


def test_a_failing_per_class_csv_write_still_prints_the_figures_and_keeps_the_old_csv(
        exported, validation, tmp_path):
    csv_path = tmp_path / "per_class.csv"
    csv_path.write_text("an earlier result\n")
    # Any file larger than 10 bytes fails to write: the CSV, not the (empty) write probe.
    finished = _main(f"--saved_model_dir={exported['path']}", f"--data_dir={validation}",
                     f"--per_class_csv={csv_path}", limit_file_size=10)
    _assert_one_line_error(finished, f"--per_class_csv={csv_path}: File too large; the figures")
    assert finished.stdout.splitlines()[-1].startswith("top_1_accuracy=")
    assert f"examples={NUM_IMAGES}" in finished.stdout
    assert csv_path.read_text() == "an earlier result\n"
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_the_export_base_is_refused_naming_the_newest_version(exported, validation):
    with pytest.raises(PipelineError, match=r"is the parent of 1 export, not one: give a version directory, "
                                            r"e\.g\. the newest: --saved_model_dir=") as raised:
        evaluate_saved_model.evaluate(str(exported["base"]), validation)
    assert str(raised.value).endswith(exported["path"])


def test_a_folder_that_is_not_a_saved_model_is_one_line(validation, tmp_path):
    with pytest.raises(PipelineError, match="is not a SavedModel"):
        evaluate_saved_model.evaluate(str(tmp_path), validation)
    with pytest.raises(PipelineError, match="does not exist"):
        evaluate_saved_model.evaluate(str(tmp_path / "missing"), validation)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[]", b'{"num_classes": 5}'])
def test_a_damaged_export_info_is_one_line_and_left_as_it_is(exported, validation, tmp_path,
                                                             content):
    copy = tmp_path / "export"
    shutil.copytree(exported["path"], copy)
    info = copy / "assets.extra" / "export_info.json"
    info.write_bytes(content)
    with pytest.raises(PipelineError, match="export_info.json (is not valid JSON|lacks integer)") \
            as raised:
        evaluate_saved_model.evaluate(str(copy), validation)
    assert "\n" not in str(raised.value)
    assert info.read_bytes() == content


def test_a_damaged_saved_model_is_one_line(exported, validation, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported["path"], copy)
    (copy / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="cannot be loaded .*export the checkpoint again"):
        evaluate_saved_model.evaluate(str(copy), validation)


def test_batch_size_zero_is_one_line(exported, validation):
    finished = _main(f"--saved_model_dir={exported['path']}", f"--data_dir={validation}",
                     "--batch_size=0")
    _assert_one_line_error(finished, "--batch_size=0: must be an integer >= 1")


def test_blacklist_with_a_byte_order_mark_is_read_and_a_binary_one_refused(tmp_path):
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes("\ufeff3\r\n7\n".encode("utf-8"))
    assert evaluate_saved_model.read_blacklist(str(with_bom)) == {3, 7}
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xd8")
    with pytest.raises(PipelineError, match="is not a text file"):
        evaluate_saved_model.read_blacklist(str(binary))


@pytest.mark.parametrize("kind", ["truncated", "bit_flip", "bad_jpeg_valid_crc"])
def test_a_corrupt_record_is_named_by_shard_and_index(exported, validation, kind):
    shard = os.path.join(validation, "validation-00001-of-00002")
    fault_fixtures.corrupt(shard, kind, record_index=2)
    with pytest.raises(PipelineError) as raised:
        evaluate_saved_model.evaluate(exported["path"], validation, batch_size=4)
    assert "\n" not in str(raised.value)
    assert f"corrupt data in --data_dir: {shard} record 2:" in str(raised.value)


def test_skip_corrupt_records_counts_every_record_left_out(exported, validation):
    fault_fixtures.corrupt(os.path.join(validation, "validation-00000-of-00002"), "bad_jpeg_valid_crc", 1)
    # Truncated in its 4th of 5 records: two records are lost.
    fault_fixtures.corrupt(os.path.join(validation, "validation-00001-of-00002"), "truncated", 3)
    result = evaluate_saved_model.evaluate(exported["path"], validation, batch_size=4,
                                           skip_corrupt_records=True)
    assert result["skipped_corrupt"] == 3
    assert result["examples"] == NUM_IMAGES - 3


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
