"""The failure model of a multi-worker job (docs/DESIGN.md §7.4): when one training task is lost
(killed, or ended by a corrupt record), the other stops within --peer_timeout_secs with one line
naming it and exit code 75, without restoring checkpoints in a loop; relaunching every task with the
same command resumes from the last checkpoint, finishes, and exports a model that evaluates like the
Estimator."""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import pytest
import tensorflow as tf

from official.utils import cluster
from official.xception import evaluate_saved_model
from official.xception import imagenet_main
from official.xception import model_fn as model_fn_lib
from official.xception import xception_flags
from tests import fault_fixtures
from tests import process_fixtures
from tests import record_fixtures
from tests import tiny_network

NUM_SHARDS = 4  # labels 0..3, shard i holding label i
GLOBAL_BATCH = 4
STEPS = 16
CHECKPOINT_STEPS = 4
PEER_TIMEOUT_SECS = 30
# What the test allows from the loss of a peer to the survivor's exit: the bound, plus slack.
EXIT_BOUND_SECS = PEER_TIMEOUT_SECS + 10
EVAL_EXAMPLES = 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("shards"))
    record_fixtures.write_label_per_shard_splits(directory, NUM_SHARDS)
    return directory


def _common_flags(data_dir, model_dir):
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--num_gpus=0",
            f"--batch_size={GLOBAL_BATCH}", "--image_size=71", f"--num_classes={NUM_SHARDS}",
            "--label_offset=0", f"--train_examples={GLOBAL_BATCH * STEPS}", "--train_epochs=1",
            f"--eval_examples={EVAL_EXAMPLES}", "--shuffle_buffer=8", "--seed=3",
            "--moving_average_decay=0"]


def _start_cluster(data_dir, model_dir, export_dir):
    hosts = ",".join(f"127.0.0.1:{port}" for port in process_fixtures.free_ports(2))
    environment = process_fixtures.environment()
    environment.pop("TF_CONFIG", None)
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.tiny_imagenet_main", *_common_flags(data_dir, model_dir),
         "--distribution_strategy=multi_worker_mirrored", f"--worker_hosts={hosts}",
         f"--task_index={index}", f"--peer_timeout_secs={PEER_TIMEOUT_SECS}",
         f"--save_checkpoints_steps={CHECKPOINT_STEPS}", "--log_steps=4",
         f"--export_dir={export_dir}"],
        cwd=process_fixtures.REPO, env=environment, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for index in range(2)]


def _outputs(processes, timeout):
    """[(exit code, stderr)] of each process, killing all of them after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
        errors = [process.communicate(timeout=max(1, deadline - time.monotonic()))[1]
                  for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, stderr) for process, stderr in zip(processes, errors)]


def _restores(stderr):
    return re.findall(r"Restoring parameters from (\S+)", stderr)


def _stop_line(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _assert_console_tells_the_story(console, log_file):
    """The console has the progress and checkpoints but not the cluster's set-up, which the task's
    log file keeps."""
    python_lines = re.findall(r"^[IWE]\d{4} .*$", console, re.MULTILINE)
    assert f"this task's full log: {log_file}" in console
    assert any("Global batch 4 = 2 replicas x 2" in line for line in python_lines)
    assert any(re.search(r"step \d+/16: loss", line) for line in python_lines)
    assert any("Saving checkpoints for" in line for line in python_lines)
    for setup in ("Using config", "cluster_spec", "TF_CONFIG environment variable"):
        assert setup not in console
    with open(log_file, encoding="utf-8") as handle:
        full = handle.read()
    for setup in ("Using config", "cluster_spec", "Global batch 4 = 2 replicas x 2"):
        assert setup in full
    assert len(python_lines) < 40, "\n".join(python_lines)


def _relaunch_finishes(data_dir, model_dir, export_dir, resumed_from):
    results = _outputs(_start_cluster(data_dir, model_dir, export_dir), timeout=200)
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
    # Both tasks, once, from the chief's checkpoint left behind (not from step 0).
    for _, stderr in results:
        assert _restores(stderr) == [str(model_dir / f"model.ckpt-{resumed_from}")], stderr[-3000:]
    assert imagenet_main.checkpoint_step(str(model_dir)) == STEPS
    (version,) = os.listdir(export_dir)
    return os.path.join(export_dir, version)


def _assert_export_evaluates_like_the_estimator(data_dir, model_dir, saved_model_dir):
    flag_values = flags.FlagValues()
    xception_flags.define_all(flag_values)
    flag_values(["imagenet_main", *_common_flags(data_dir, model_dir), "--eval_only"])
    estimator_results = imagenet_main.run(flag_values, model_builder=tiny_network.tiny_network)
    assert estimator_results["global_step"] == STEPS
    saved = evaluate_saved_model.evaluate(saved_model_dir, data_dir, batch_size=2)
    assert saved["examples"] == estimator_results[model_fn_lib.EVAL_EXAMPLES_KEY] == EVAL_EXAMPLES
    assert saved["top_1"] == pytest.approx(estimator_results[model_fn_lib.TOP_1_KEY])
    assert saved["top_5"] == pytest.approx(estimator_results[model_fn_lib.TOP_5_KEY])


def test_a_killed_worker_ends_the_chief_with_75_and_a_relaunch_resumes(data_dir, tmp_path):
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    chief, worker = processes = _start_cluster(data_dir, model_dir, export_dir)
    deadline = time.monotonic() + 150
    while not glob.glob(str(model_dir / "model.ckpt-*[1-9]*.index")):
        assert time.monotonic() < deadline and chief.poll() is None, "no checkpoint past step 0"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    (chief_code, chief_err), _ = _outputs(processes, timeout=EXIT_BOUND_SECS)
    elapsed = time.monotonic() - killed
    print(f"chief exited {elapsed:.1f} s after the worker was killed")
    assert elapsed < EXIT_BOUND_SECS
    assert chief_code == cluster.PEER_LOST_EXIT_CODE, chief_err[-3000:]
    line = _stop_line(chief_err)
    assert re.fullmatch(r"error: chief 0 \(127\.0\.0\.1:\d+\) stops: lost worker 0 "
                        r"\(127\.0\.0\.1:\d+\); relaunch all tasks with the same command to "
                        r"resume from the last checkpoint \(exit code 75\)", line), line
    # It stopped at the first sign of the loss: no checkpoint restored after it.
    assert not _restores(chief_err), chief_err[-3000:]
    left = imagenet_main.checkpoint_step(str(model_dir))
    assert 0 < left < STEPS
    assert not os.path.exists(export_dir) or not os.listdir(export_dir)
    # The non-chief keeps one checkpoint of its own, not --keep_checkpoint_max of them. Its saver lists
    # the one it keeps before deleting the one before; the kill may land between the two.
    worker_state = tf.train.get_checkpoint_state(str(model_dir / "tmp_worker_0"))
    assert len(worker_state.all_model_checkpoint_paths) == 1
    assert len(glob.glob(str(model_dir / "tmp_worker_0" / "model.ckpt-*.index"))) <= 2
    _assert_console_tells_the_story(chief_err, model_dir / "chief-0.log")

    saved_model_dir = _relaunch_finishes(data_dir, model_dir, export_dir, resumed_from=left)
    _assert_export_evaluates_like_the_estimator(data_dir, model_dir, saved_model_dir)


def test_a_corrupt_record_on_one_worker_ends_it_with_1_and_the_chief_with_75(data_dir, tmp_path):
    # Worker 1 reads the odd shards (input_context): only it meets the damaged record.
    corrupt_dir = tmp_path / "shards"
    shutil.copytree(data_dir, corrupt_dir)
    shard = sorted(glob.glob(str(corrupt_dir / "train-*")))[1]
    fault_fixtures.corrupt(shard, "bad_jpeg_valid_crc", 0)
    model_dir, export_dir = tmp_path / "model", tmp_path / "export"
    started = time.monotonic()
    (chief_code, chief_err), (worker_code, worker_err) = _outputs(
        _start_cluster(corrupt_dir, model_dir, export_dir), timeout=150)
    print(f"both tasks exited {time.monotonic() - started:.1f} s after the start")
    assert worker_code == 1, worker_err[-3000:]
    assert f"corrupt data in --data_dir: {shard}" in _stop_line(worker_err)
    assert chief_code == cluster.PEER_LOST_EXIT_CODE, chief_err[-3000:]
    assert "stops: lost worker 0" in _stop_line(chief_err)
    assert not _restores(chief_err), chief_err[-3000:]
    left = imagenet_main.checkpoint_step(str(model_dir))

    # The shard replaced by a good copy: the same command resumes and finishes.
    shutil.copy(os.path.join(data_dir, os.path.basename(shard)), shard)
    _relaunch_finishes(corrupt_dir, model_dir, export_dir, resumed_from=left)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
