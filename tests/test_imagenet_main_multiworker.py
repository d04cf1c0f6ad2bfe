"""Two worker processes on 127.0.0.1 train together through TF_CONFIG and both finish."""

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_local_workers_train_together_and_finish(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    model_dir = tmp_path / "model"
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        command = [sys.executable, "-m", "tests.tiny_imagenet_main", f"--model_dir={model_dir}",
                   "--use_synthetic_data", "--distribution_strategy=multi_worker_mirrored",
                   "--num_gpus=0", "--batch_size=8", "--image_size=71", "--num_classes=3",
                   f"--train_examples={8 * STEPS}", "--train_epochs=1", "--eval_examples=8",
                   "--log_steps=5"]
        environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                           TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen(command, cwd=REPO, env=environment, text=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        # The strategy waits for all peers; a hang must fail the test, not stall the suite.
        errors = [process.communicate(timeout=240)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for index, (process, stderr) in enumerate(zip(processes, errors)):
        assert process.returncode == 0, f"worker {index}:\n{stderr[-3000:]}"
    # The chief (worker 0) owns the checkpoints: the last one is at the final global step.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    assert reader.get_tensor("global_step") == STEPS
    for stderr in errors:
        assert "Global batch 8 = 2 replicas x 4" in stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
