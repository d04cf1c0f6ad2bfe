"""Through a real one-node Slurm cluster (Debian's slurm-wlm and munge, started here on free ports
of 127.0.0.1): `srun -n 2 ./run_imagenet.sh` trains a chief and a worker, exports once and evaluates
the export; deploy/slurm/xception.sbatch relaunches a job step that lost a task and finishes; tasks
keep the CUDA_VISIBLE_DEVICES Slurm gave each of them."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import process_fixtures
from tests import record_fixtures
from tests import slurm_cluster

# The scripts in the source tree (not runfiles symlinks), so that they find the project's .venv.
SOURCE = os.path.dirname(os.path.realpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "run_imagenet.sh")))
SBATCH_SCRIPT = os.path.join(SOURCE, "deploy", "slurm", "xception.sbatch")
NUM_CLASSES = 2
GLOBAL_BATCH = 4
STEPS = 6
# Real Xception, as small as it goes: 71x71 images, a few steps, a checkpoint every 2 steps.
TINY_RUN = ["--image_size=71", f"--batch_size={GLOBAL_BATCH}", f"--num_classes={NUM_CLASSES}",
            "--label_offset=0", f"--train_examples={GLOBAL_BATCH * STEPS}", "--train_epochs=1",
            "--eval_examples=4", "--shuffle_buffer=8", "--seed=3", "--log_steps=1",
            "--save_checkpoints_steps=2", "--peer_timeout_secs=120"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_cluster.install()
    if reason:
        pytest.skip(f"no Slurm: {reason}")
    cluster = slurm_cluster.Cluster(str(tmp_path_factory.mktemp("slurm")))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("shards"))
    record_fixtures.write_labelled_split(directory, "train", [i % NUM_CLASSES for i in range(16)], 2)
    record_fixtures.write_labelled_split(directory, "validation", [0, 1, 0, 1], 1)
    return directory


def _environment(data_dir, model_dir, **more):
    return dict(DATA_DIR=data_dir, MODEL_DIR=model_dir, NUM_GPUS="0", TF_CPP_MIN_LOG_LEVEL="2",
                **more)


def _checkpoint_step(model_dir):
    latest = tf.train.latest_checkpoint(model_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else None


def _task_process(model_dir, rank):
    """The pid of the imagenet_main process of Slurm task `rank` training into `model_dir`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environment = dict(item.split(b"=", 1) for item in handle.read().split(b"\0")
                                   if b"=" in item)
        except OSError:
            continue
        if (b"official.xception.imagenet_main" in command
                and environment.get(b"MODEL_DIR") == model_dir.encode()
                and environment.get(b"SLURM_PROCID") == str(rank).encode()):
            return int(entry)
    return None


def _sbatch(slurm, data_dir, model_dir, output, *flags):
    return subprocess.Popen(
        ["sbatch", "--wait", "--nodes=1", "--ntasks=2", f"--output={output}", SBATCH_SCRIPT,
         *TINY_RUN, *flags],
        env=slurm.environment(**_environment(data_dir, model_dir, XCEPTION_DIR=SOURCE,
                                             MAX_RELAUNCHES="2")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sbatch_relaunches_a_step_that_lost_a_task_then_exports_once_and_evaluates(
        slurm, data_dir, tmp_path):
    # The job step is `srun -n 2 ./run_imagenet.sh`: a chief and a worker on this node.
    model_dir, output = str(tmp_path / "model"), str(tmp_path / "batch.out")
    batch = _sbatch(slurm, data_dir, model_dir, output)
    try:
        deadline = time.monotonic() + 400
        while _checkpoint_step(model_dir) in (None, 0) and time.monotonic() < deadline:
            assert batch.poll() is None, open(output).read()[-3000:]
            time.sleep(0.5)
        killed_at_step = _checkpoint_step(model_dir)
        assert killed_at_step is not None and 0 < killed_at_step < STEPS, open(output).read()
        worker = _task_process(model_dir, 1)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        while "launch 2 of" not in open(output).read() and time.monotonic() < deadline:
            time.sleep(0.2)
        relaunched = time.monotonic()
        stdout, stderr = batch.communicate(timeout=400)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    log = open(output).read()
    assert batch.returncode == 0, (stdout, stderr, log[-3000:])
    print(f"killed task 1 at checkpoint {killed_at_step}; step 2 launched "
          f"{relaunched - killed:.1f} s later")
    assert log.count("launch 1 of at most 3") == 1 and log.count("launch 2 of at most 3") == 1, log
    assert "launch 3 of" not in log and "finished after 2 launch(es)" in log, log
    assert _checkpoint_step(model_dir) == STEPS
    # The second launch resumed from the checkpoint the first one left, not from step 0.
    chief_log = open(os.path.join(model_dir, "run-task0.log")).read()
    restored = [int(step) for step in re.findall(r"Restoring parameters from \S+model\.ckpt-(\d+)",
                                                 chief_log)]
    assert restored and restored[-1] >= killed_at_step, restored
    # Slurm kept one log per task, both launches appended.
    task_logs = sorted(os.path.basename(path) for path in glob.glob(
        os.path.join(model_dir, "slurm-*", "task-*.log")))
    assert task_logs == ["task-0.log", "task-1.log"]
    exports = glob.glob(os.path.join(model_dir, "export", "[0-9]*"))
    assert len(exports) == 1, exports  # the chief alone exported, once
    # Only the chief evaluated the export, once.
    figures = re.compile(r"top_1_accuracy=[\d.]+ top_5_accuracy=[\d.]+ examples=4")
    assert len(figures.findall(chief_log)) == 1, chief_log[-2000:]
    assert not figures.findall(open(os.path.join(model_dir, "run-task1.log")).read())


def test_sbatch_does_not_relaunch_bad_input(slurm, data_dir, tmp_path):
    model_dir, output = str(tmp_path / "model"), str(tmp_path / "batch.out")
    batch = _sbatch(slurm, data_dir, model_dir, output, "--image_size=10")
    try:
        batch.communicate(timeout=300)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    log = open(output).read()
    assert batch.returncode == 1, log
    assert "launch 2 of" not in log, log
    assert re.search(r"error: task [01] exited with 1 \(see .*task-[01]\.log\): not relaunching",
                     log), log
    task_log = open(glob.glob(os.path.join(model_dir, "slurm-*", "task-0.log"))[0]).read()
    assert "error: --image_size=10: must be an integer in [71, 2048]" in task_log, task_log[-2000:]


def test_tasks_on_one_node_keep_their_own_cuda_visible_devices(slurm, tmp_path):
    # Each task's devices set for it (as Slurm's GPU binding does), then the cluster is resolved
    # the way imagenet_main does it.
    probe = ("import os, sys; from official.xception import imagenet_main; "
             "tf_config = imagenet_main.configure_cluster(None, None, slurm_port=7000); "
             "print(os.environ['SLURM_PROCID'], tf_config['task']['type'], "
             "os.environ['CUDA_VISIBLE_DEVICES'])")
    command = ("export CUDA_VISIBLE_DEVICES=$(( 4 + 2 * SLURM_PROCID )),$(( 5 + 2 * SLURM_PROCID ));"
               f" exec {sys.executable} -c \"{probe}\"")
    result = slurm.run(["srun", "-n", "2", "bash", "-c", command], timeout=120,
                       PYTHONPATH=process_fixtures.REPO, TF_CPP_MIN_LOG_LEVEL="2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(result.stdout.split("\n")[:-1]) == ["0 chief 4,5", "1 worker 6,7"], result.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
