"""Fault injection into imagenet_main: corrupt shards are named by file and record, a second training
on one --model_dir is refused, resuming with another class count touches nothing, bad numbers and
output locations fail before any work, and a full disk is one line; every failure is a one-line
PipelineError (or `error:` line and exit status 1) and leaves the files already written unchanged."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import h5py
import pytest
import tensorflow as tf

from official.utils import run_safety
from official.utils.errors import PipelineError
from official.xception import imagenet_main
from official.xception import input_pipeline
from official.xception import model_fn as model_fn_lib
from tests import fault_fixtures
from tests import main_flags
from tests import record_fixtures
from tests import tiny_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 71
NUM_CLASSES = 3
TRAIN_EXAMPLES = 24
EVAL_EXAMPLES = 10
# Small-data settings every in-process run here starts from.
SMALL_RUN = dict(batch_size=8, image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
                 train_examples=TRAIN_EXAMPLES, eval_examples=EVAL_EXAMPLES, train_epochs=1,
                 shuffle_buffer=32, base_batch_size=8, dropout_rate=0.0,
                 moving_average_decay=0.0, num_gpus=0, log_steps=10)


def _flags(**values):
    return main_flags.parse(SMALL_RUN, **values)


def _run(**values):
    return imagenet_main.run(_flags(**values), model_builder=tiny_network.tiny_network)


def _write_data(directory, num_classes=NUM_CLASSES, summary=False):
    """Two train and two validation shards of labels 1..num_classes (and a build_summary.json)."""
    labels = lambda count: [1 + index % num_classes for index in range(count)]  # noqa: E731
    record_fixtures.write_labelled_split(str(directory), "train", labels(TRAIN_EXAMPLES), 2, seed=0)
    record_fixtures.write_labelled_split(str(directory), "validation", labels(EVAL_EXAMPLES), 2,
                                         seed=1)
    if summary:
        classes = [{"label": label, "name": f"n{label:08d}", "text": f"class {label}"}
                   for label in range(1, num_classes + 1)]
        (directory / "build_summary.json").write_text(json.dumps({
            "settings": {"first_label": 1}, "classes": classes,
            "splits": {"train": {"images_written": TRAIN_EXAMPLES},
                       "validation": {"images_written": EVAL_EXAMPLES}}}))
    return str(directory)


@pytest.mark.parametrize("kind", ["truncated", "bit_flip", "bad_jpeg_valid_crc"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_corrupt_record_is_named_by_shard_and_index(tmp_path, kind, split):
    data_dir = _write_data(tmp_path / "data")
    shard = os.path.join(data_dir, f"{split}-00001-of-00002")
    fault_fixtures.corrupt(shard, kind, record_index=3)
    with pytest.raises(PipelineError) as raised:
        # No record shuffling: the epoch's 3 steps then read exactly its 24 records, the bad one
        # among them (a shuffle buffer mixes in the next epoch's records and may leave it unread).
        _run(data_dir=data_dir, model_dir=tmp_path / "model", shuffle_buffer=1)
    message = str(raised.value)
    assert "\n" not in message
    assert f"corrupt data in --data_dir: {shard} record 3:" in message
    assert "official.xception.verify_shards" in message and "--skip_corrupt_records" in message


@pytest.mark.parametrize("num_cpu_replicas", [1, 2])
def test_skip_corrupt_records_trains_and_counts_what_it_left_out(tmp_path, caplog, num_cpu_replicas):
    data_dir = _write_data(tmp_path / "data")
    fault_fixtures.corrupt(os.path.join(data_dir, "train-00000-of-00002"), "bad_jpeg_valid_crc", 2)
    fault_fixtures.corrupt(os.path.join(data_dir, "validation-00000-of-00002"),
                           "bad_jpeg_valid_crc", 0)
    # Truncated in its 4th record: that record and the one after it (5 per shard) are lost.
    fault_fixtures.corrupt(os.path.join(data_dir, "validation-00001-of-00002"), "truncated", 3)
    skipped_before = input_pipeline.skipped_image_count()
    # Without record shuffling the first epoch's records come first, so the bad training image is
    # among those the first epoch's steps decode (a shuffle buffer larger than the split mixes in the
    # next epoch's records and may leave it for later).
    results = _run(data_dir=data_dir, model_dir=tmp_path / "model", skip_corrupt_records=True,
                   num_cpu_replicas=num_cpu_replicas, shuffle_buffer=1)
    assert results["global_step"] == TRAIN_EXAMPLES // 8
    assert results[model_fn_lib.EVAL_EXAMPLES_KEY] == EVAL_EXAMPLES - 3
    assert "evaluation left out 3 of 10 validation records" in caplog.text
    # The bad training image at least once (the pipeline reads ahead), the validation one once.
    skipped = input_pipeline.skipped_image_count() - skipped_before
    assert skipped >= 2
    assert (f"{input_pipeline.skipped_image_count()} records that break the schema or whose image "
            "does not decode left out") in caplog.text


def _trainer(model_dir, data_dir, *extra):
    return [sys.executable, "-m", "tests.tiny_imagenet_main", f"--model_dir={model_dir}",
            f"--data_dir={data_dir}", "--batch_size=8", f"--image_size={IMAGE_SIZE}",
            f"--num_classes={NUM_CLASSES}", f"--train_examples={TRAIN_EXAMPLES}",
            f"--eval_examples={EVAL_EXAMPLES}", "--num_gpus=0", "--log_steps=10", *extra]


def _environment():
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def test_a_second_training_on_the_same_model_dir_is_refused_until_the_first_dies(tmp_path):
    data_dir = _write_data(tmp_path / "data")
    model_dir = tmp_path / "model"
    first = subprocess.Popen(_trainer(model_dir, data_dir, "--train_epochs=1000"), cwd=REPO,
                             env=_environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = model_dir / (run_safety.LOCK_PREFIX + "train")
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first training ended early"
            time.sleep(0.2)
        second = subprocess.run(_trainer(model_dir, data_dir, "--max_train_steps=1"), cwd=REPO,
                                env=_environment(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: --model_dir={model_dir} is in use by another training (train: pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # What a kill during a save leaves (the saver's shards before their rename), for sure.
    leftover = model_dir / "model.ckpt-99_temp" / "part-00000-of-00001.data-00000-of-00001"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half a checkpoint")
    # The kernel released the killed run's lock: training resumes (from wherever the first got to)
    # and removes the leftovers.
    resumed_from = imagenet_main.checkpoint_step(str(model_dir))
    results = _run(data_dir=data_dir, model_dir=model_dir, max_train_steps=resumed_from + 2,
                   train_epochs=1000, epochs_between_evals=1000)
    assert results["global_step"] == resumed_from + 2
    assert not any("_temp" in name for name in os.listdir(model_dir))


def test_the_lock_is_per_cluster_task(tmp_path):
    assert run_safety.task_name({}) == "train"
    assert run_safety.task_name({"cluster": {}, "task": {"type": "evaluator", "index": 0}}) == \
        "evaluator-0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from official.utils import run_safety\n"
         "run_safety.lock_model_dir(sys.argv[1], 'worker-0')\n"
         "print('locked', flush=True)\n"
         "time.sleep(300)", str(tmp_path)],
        cwd=REPO, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        run_safety.lock_model_dir(str(tmp_path), "worker-1")  # the other worker of the cluster
        with pytest.raises(PipelineError, match=rf"in use by another training \(worker-0: pid "
                                                rf"{holder.pid} on "):
            run_safety.lock_model_dir(str(tmp_path), "worker-0")
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_resuming_with_another_class_count_touches_nothing_and_the_checkpoint_still_exports(tmp_path):
    model_dir = tmp_path / "model"
    three = _write_data(tmp_path / "three", summary=True)
    _run(data_dir=three, model_dir=model_dir, max_train_steps=2)
    before = fault_fixtures.snapshot(model_dir)
    assert "classes.tsv" in before
    four = _write_data(tmp_path / "four", num_classes=4, summary=True)
    with pytest.raises(PipelineError, match=r"holds a 3-class checkpoint .* this run has 4 classes") \
            as raised:
        imagenet_main.run(_flags(data_dir=four, model_dir=model_dir, num_classes=None,
                                 train_examples=None, eval_examples=None),
                          model_builder=tiny_network.tiny_network)
    assert "\n" not in str(raised.value)
    assert fault_fixtures.snapshot(model_dir) == before
    imagenet_main.run(_flags(data_dir=three, model_dir=model_dir, export_only=True,
                             export_dir=tmp_path / "export", num_classes=None,
                             train_examples=None, eval_examples=None),
                      model_builder=tiny_network.tiny_network)
    assert len(os.listdir(tmp_path / "export")) == 1


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write to, even as root (a read-only mount)."""
    path = tmp_path / "read_only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only file system")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("values, message", [
    (dict(train_epochs="nan"), "--train_epochs=nan: must be a positive finite number"),
    (dict(train_epochs="inf"), "--train_epochs=inf: must be a positive finite number"),
    (dict(train_epochs=-1), "--train_epochs=-1.0: must be a positive finite number"),
    (dict(epochs_between_evals="nan"), "--epochs_between_evals=nan"),
    (dict(max_train_steps=-5), "--max_train_steps=-5: must be an integer >= 1"),
    (dict(max_train_steps=0), "--max_train_steps=0: must be an integer >= 1"),
    (dict(log_steps=0), "--log_steps=0: must be an integer >= 1"),
    (dict(log_steps=-3), "--log_steps=-3: must be an integer >= 1"),
    (dict(seed=-1), "--seed=-1: must be an integer >= 0"),
    (dict(eval_central_fraction=0), "--eval_central_fraction: "),
    (dict(eval_central_fraction=1.5), "--eval_central_fraction: "),
    # Every float flag is finite, every number in its range (flags_core.set_ranges).
    (dict(base_learning_rate="nan"), r"--base_learning_rate=nan: must be a positive finite number"),
    (dict(base_learning_rate="inf"), r"--base_learning_rate=inf: must be a positive finite number"),
    (dict(momentum="nan"), r"--momentum=nan: must be a finite number in \[0, 1\)"),
    (dict(weight_decay="inf"), r"--weight_decay=inf: must be a finite number >= 0"),
    (dict(peer_timeout_secs="nan"), r"--peer_timeout_secs=nan: must be a positive finite number"),
    (dict(eval_throttle_secs="inf"), r"--eval_throttle_secs=inf: must be a finite number >= 0"),
    (dict(image_size=100000), r"--image_size=100000: must be an integer in \[71, 2048\]"),
    (dict(batch_size=0), r"--batch_size=0: must be an integer >= 1"),
    (dict(num_gpus=-2), r"--num_gpus=-2: must be an integer >= -1"),
])
def test_bad_numbers_fail_in_one_line_before_anything_is_written(tmp_path, values, message):
    data_dir = _write_data(tmp_path / "data")
    with pytest.raises(PipelineError, match=message) as raised:
        _run(data_dir=data_dir, model_dir=tmp_path / "model", **values)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "model").exists()


def test_model_dir_that_is_a_file_fails_in_one_line(tmp_path):
    data_dir = _write_data(tmp_path / "data")
    (tmp_path / "file").write_bytes(b"keep me")
    with pytest.raises(PipelineError, match=r"--model_dir=.*file is a file, not a directory"):
        _run(data_dir=data_dir, model_dir=tmp_path / "file")
    assert (tmp_path / "file").read_bytes() == b"keep me"


@pytest.mark.parametrize("flag", ["model_dir", "export_dir"])
def test_unwritable_output_fails_before_any_training(tmp_path, read_only_dir, flag):
    data_dir = _write_data(tmp_path / "data")
    locations = {"model_dir": tmp_path / "model", "export_dir": tmp_path / "export"}
    locations[flag] = read_only_dir / "sub"
    with pytest.raises(PipelineError, match=rf"--{flag}=.*sub is not writable") as raised:
        _run(data_dir=data_dir, **locations)
    assert "\n" not in str(raised.value)
    assert tf.train.latest_checkpoint(str(locations["model_dir"])) is None


def test_keras_h5_as_a_checkpoint_names_the_converter(tmp_path):
    data_dir = _write_data(tmp_path / "data")
    weights = tmp_path / "xception_weights.h5"
    with h5py.File(weights, "w") as handle:
        handle.attrs["layer_names"] = [b"block1_conv1"]
    with pytest.raises(PipelineError, match="is a Keras HDF5 file, not a TensorFlow checkpoint: "
                                            "convert it with python -m "
                                            "official.xception.convert_keras_weights"):
        _run(data_dir=data_dir, model_dir=tmp_path / "model",
             pretrained_model_checkpoint_path=weights)


def _limit_file_size(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    data_dir = _write_data(tmp_path / "data")
    model_dir = tmp_path / "model"
    # In another process: this one would hold the model directory's lock from then on.
    subprocess.run(_trainer(model_dir, data_dir, "--train_epochs=100", "--max_train_steps=2"),
                   cwd=REPO, env=_environment(), capture_output=True, timeout=180, check=True)
    before = {name: content for name, content in fault_fixtures.snapshot(model_dir).items()
              if name.startswith(("model.ckpt", "checkpoint"))}
    # Resuming writes a checkpoint far larger than the limit.
    finished = subprocess.run(_trainer(model_dir, data_dir, "--train_epochs=100",
                                       "--max_train_steps=4"), cwd=REPO, env=_environment(),
                              capture_output=True, text=True, timeout=180,
                              preexec_fn=_limit_file_size(20_000))
    assert finished.returncode == 1, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: a file size limit was reached while writing to "
                           f"--model_dir={model_dir}: free space"), last
    after = fault_fixtures.snapshot(model_dir)
    for name, content in before.items():
        assert after[name] == content, name


def test_full_disk_while_exporting_is_one_line_and_keeps_earlier_exports(tmp_path):
    data_dir = _write_data(tmp_path / "data")
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    export_only = _trainer(model_dir, data_dir, "--export_only", f"--export_dir={export_dir}")
    subprocess.run(_trainer(model_dir, data_dir, "--max_train_steps=2", f"--export_dir={export_dir}"),
                   cwd=REPO, env=_environment(), capture_output=True, timeout=180, check=True)
    before = fault_fixtures.snapshot(export_dir)
    assert len(os.listdir(export_dir)) == 1
    finished = subprocess.run(export_only, cwd=REPO, env=_environment(), capture_output=True,
                              text=True, timeout=180, preexec_fn=_limit_file_size(20_000))
    assert finished.returncode == 1, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1] == (
        "error: export failed, earlier exports are untouched: a file size limit was reached while "
        f"writing to --export_dir={export_dir}: free space (or raise the limit) and re-run with "
        "--export_only")
    assert fault_fixtures.snapshot(export_dir) == before
    assert len(os.listdir(export_dir)) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
