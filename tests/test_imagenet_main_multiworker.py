"""Worker processes on 127.0.0.1 train together: through --worker_hosts, and through TF_CONFIG as
Kubeflow's TFJob writes it (chief, worker and an evaluator). Each training shard holds one label, so
the labels a worker trains on say which files it read. The chief records the run; the report reads
the shared directory."""

import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from official.utils import provenance
from official.xception import model_fn as model_fn_lib
from official.xception import report
from tests import process_fixtures
from tests import record_fixtures
from tests import report_tables
from tests import tiny_imagenet_main

NUM_SHARDS = 4  # labels 0..3, shard i holding label i
STEPS = 6
GLOBAL_BATCH = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("shards"))
    record_fixtures.write_label_per_shard_splits(directory, NUM_SHARDS)
    return directory


def _start(data_dir, model_dir, extra, tf_config=None):
    command = [sys.executable, "-m", "tests.tiny_imagenet_main", f"--data_dir={data_dir}",
               f"--model_dir={model_dir}", "--print_train_labels", "--num_gpus=0",
               f"--batch_size={GLOBAL_BATCH}", "--image_size=71", f"--num_classes={NUM_SHARDS}",
               "--label_offset=0", f"--train_examples={GLOBAL_BATCH * STEPS}", "--train_epochs=1",
               "--eval_examples=5", "--shuffle_buffer=8", "--seed=3", "--log_steps=3",
               "--peer_timeout_secs=120", "--eval_throttle_secs=1", *extra]
    environment = process_fixtures.environment()
    environment.pop("TF_CONFIG", None)
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(command, cwd=process_fixtures.REPO, env=environment, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(processes, timeout=400):
    try:
        # The strategy waits for all peers; a hang must fail the test, not stall the suite.
        errors = [process.communicate(timeout=timeout)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, (process, stderr) in enumerate(zip(processes, errors)):
        assert process.returncode == 0, f"task {index}:\n{stderr[-3000:]}"
    return errors


def _train_labels(stderr):
    prefix = re.escape(tiny_imagenet_main.TRAIN_LABELS_PREFIX)
    batches = re.findall(prefix + r" \[([\d ]*)\]", stderr)
    assert len(batches) == STEPS, stderr[-3000:]
    return {int(label) for batch in batches for label in batch.split()}


def _assert_disjoint_and_covering(first, second):
    assert first and second
    assert not first & second
    assert first | second == set(range(NUM_SHARDS))


def test_worker_hosts_workers_train_on_disjoint_files_that_cover_the_split(data_dir, tmp_path):
    hosts = ",".join(f"127.0.0.1:{port}" for port in process_fixtures.free_ports(2))
    model_dir = tmp_path / "model"
    errors = _finish([
        _start(data_dir, model_dir, ["--distribution_strategy=multi_worker_mirrored",
                                     f"--worker_hosts={hosts}", f"--task_index={index}"])
        for index in range(2)])
    _assert_disjoint_and_covering(_train_labels(errors[0]), _train_labels(errors[1]))
    # The chief (task 0) owns the checkpoints: the last one is at the final global step.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    assert reader.get_tensor("global_step") == STEPS
    for stderr in errors:
        assert "Global batch 4 = 2 replicas x 2" in stderr


def _evaluation_steps(eval_dir):
    steps = []
    for path in tf.io.gfile.glob(os.path.join(eval_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if any(value.tag == model_fn_lib.TOP_1_KEY for value in event.summary.value):
                steps.append(event.step)
    return steps


def test_tfjob_chief_worker_and_evaluator(data_dir, tmp_path):
    chief, worker, evaluator = (f"127.0.0.1:{port}" for port in process_fixtures.free_ports(3))
    # Exactly what TFJob puts in each pod: every replica, the evaluator too, is in the cluster.
    cluster = {"chief": [chief], "worker": [worker], "evaluator": [evaluator]}
    tasks = [{"type": "chief", "index": 0}, {"type": "worker", "index": 0},
             {"type": "evaluator", "index": 0}]
    model_dir = tmp_path / "model"
    errors = _finish([
        _start(data_dir, model_dir, ["--distribution_strategy=multi_worker_mirrored"],
               {"cluster": cluster, "task": task, "environment": "cloud"})
        for task in tasks])
    _assert_disjoint_and_covering(_train_labels(errors[0]), _train_labels(errors[1]))
    # The evaluator evaluated the final checkpoint, with the training replicas' batch (4 / 2).
    assert STEPS in _evaluation_steps(str(model_dir / "eval")), errors[2][-3000:]
    assert "Global batch 4 = 2 replicas x 2" in errors[2]
    assert tiny_imagenet_main.TRAIN_LABELS_PREFIX not in errors[2]
    # Only the chief records the run, with the shape of the cluster; the report of the shared
    # directory tables what the evaluator evaluated.
    (record,) = provenance.read_records(str(model_dir / provenance.RECORD_NAME))
    assert record["cluster"]["tasks"] == {"chief": 1, "worker": 1, "evaluator": 1}
    assert record["cluster"]["task"] == {"type": "chief", "index": 0}
    assert (record["cluster"]["replicas"], record["start_step"]) == (2, 0)
    report_path, picture_path = report.write_report(str(model_dir))
    rows = report_tables.evaluation_rows(open(report_path).read())
    assert [int(row["global step"]) for row in rows] == sorted(set(_evaluation_steps(
        str(model_dir / "eval"))))
    report_text = open(report_path).read()
    assert all(f"1 {task_type}" in report_text for task_type in ("chief", "worker", "evaluator"))
    report_tables.assert_picture(picture_path)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
