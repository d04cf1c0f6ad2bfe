"""verify_shards lists exactly the damaged records (checksum, truncation, undecodable image under a
valid checksum, a shard shorter than build_summary.json says) with progress, and exits 1 on any."""

import json
import os
import subprocess
import sys

import pytest

from official.xception import shard_check
from tests import fault_fixtures
from tests import record_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SHARD = 5


@pytest.fixture
def data_dir(tmp_path):
    """Two train and two validation shards of PER_SHARD records each, and their build_summary.json."""
    record_fixtures.write_labelled_split(str(tmp_path), "train", [1] * 2 * PER_SHARD, 2, seed=0)
    record_fixtures.write_labelled_split(str(tmp_path), "validation", [1] * 2 * PER_SHARD, 2,
                                         seed=1)
    shards = {f"{split}-{index:05d}-of-00002": {"records": PER_SHARD}
              for split in ("train", "validation") for index in range(2)}
    (tmp_path / "build_summary.json").write_text(json.dumps({"shards": shards}))
    return tmp_path


def _verify(data_dir, *args):
    return subprocess.run([sys.executable, "-m", "official.xception.verify_shards",
                           f"--data_dir={data_dir}", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=300)


def test_clean_shards_pass_with_progress(data_dir):
    finished = _verify(data_dir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.strip() == "ok: 4 shards, 20 records read, 0 bad records in 0 shards"
    assert "verified: 4/4 shards (100.0%)" in finished.stderr and "shards/s" in finished.stderr


def _truncate_at_record_boundary(path, records_kept):
    end = fault_fixtures.record_spans(path)[records_kept - 1][1]
    with open(path, "r+b") as handle:
        handle.truncate(end)


def test_every_damaged_record_is_listed_and_the_exit_status_is_1(data_dir):
    shard = lambda name: str(data_dir / name)  # noqa: E731
    # Records read: 1 before the flipped one, all 5, 2 before the cut, 3.
    fault_fixtures.corrupt(shard("train-00000-of-00002"), "bit_flip", 1)
    fault_fixtures.corrupt(shard("train-00001-of-00002"), "bad_jpeg_valid_crc", 4)
    fault_fixtures.corrupt(shard("validation-00000-of-00002"), "truncated", 2)
    _truncate_at_record_boundary(shard("validation-00001-of-00002"), 3)
    finished = _verify(data_dir)
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    listed = [line.split(":")[0] for line in finished.stdout.strip().splitlines()]
    assert listed == [f"{shard('train-00000-of-00002')} record 1",
                      f"{shard('train-00001-of-00002')} record 4",
                      f"{shard('validation-00000-of-00002')} record 2",
                      f"{shard('validation-00001-of-00002')} record 3"]
    assert "holds 3 records, build_summary.json says 5" in finished.stdout
    assert finished.stderr.strip().splitlines()[-1].startswith(
        "error: 4 shards, 11 records read, 4 bad records in 4 shards: re-run the data_prep build")


def test_without_image_checks_only_the_bytes_and_the_schema_are_checked(data_dir):
    fault_fixtures.corrupt(str(data_dir / "train-00000-of-00002"), "bad_jpeg_valid_crc", 0)
    fault_fixtures.corrupt(str(data_dir / "validation-00001-of-00002"), "bit_flip", 3)
    bad = shard_check.scan_shards(str(data_dir), check_images=False).bad
    assert [(os.path.basename(b.path), b.index) for b in bad] == [("validation-00001-of-00002", 3)]
    bad = shard_check.scan_shards(str(data_dir), splits=("train",)).bad
    assert [(os.path.basename(b.path), b.index) for b in bad] == [("train-00000-of-00002", 0)]


def test_a_directory_of_one_split_is_checked_as_it_is(data_dir):
    for name in ("train-00000-of-00002", "train-00001-of-00002"):
        os.remove(data_dir / name)
    fault_fixtures.corrupt(str(data_dir / "validation-00001-of-00002"), "bit_flip", 0)
    finished = _verify(data_dir)
    assert finished.returncode == 1
    assert finished.stdout.startswith(f"{data_dir / 'validation-00001-of-00002'} record 0:")
    assert finished.stderr.strip().splitlines()[-1].startswith("error: 2 shards, 5 records read")


def test_a_missing_data_dir_is_one_line(tmp_path):
    finished = _verify(tmp_path / "missing")
    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1].startswith("error: no files match")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
