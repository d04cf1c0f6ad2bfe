"""The cluster of a multi-worker job: host lists and TF_CONFIG checked up front in one line, the
TFJob layout from --worker_hosts, Slurm through TensorFlow's resolver, a bounded wait for peers that
SIGTERM ends, every malformed role combination in one line, the evaluator's per-device batch, and
--num_gpus=0 meaning the CPU everywhere."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from official.utils import cluster
from official.utils.errors import PipelineError
from official.xception import imagenet_main
from tests import main_flags
from tests import process_fixtures
from tests import record_fixtures


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    """No TF_CONFIG before each test, and none left after it (configure_cluster sets one)."""
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.delenv("TF_CONFIG")


@pytest.mark.parametrize("hosts, message", [
    ("a:1,,b:2", "--worker_hosts entry 2 is empty"),
    ("a:1 b:2", "entry 1 'a:1 b:2' contains whitespace: separate host:port entries with commas"),
    ("foo", "entry 1 'foo' has no port"),
    ("host:abc", "entry 1 'host:abc': the port 'abc' is not a number"),
    ("a:1,a:1", "entry 2 'a:1' repeats entry 1"),
    ("a:70000", "the port '70000' is not a number in 1..65535"),
    ("a_b!:1", "'a_b!' is not a host name"),
])
def test_malformed_host_lists_are_one_line_errors_naming_the_entry(hosts, message):
    with pytest.raises(PipelineError, match=message) as raised:
        imagenet_main.configure_cluster(hosts.split(","), 0)
    assert "\n" not in str(raised.value)
    assert "TF_CONFIG" not in os.environ


def test_worker_hosts_give_tfjobs_layout_chief_first():
    hosts = ["h0:2222", "h1:2222", "[::1]:2222"]
    assert imagenet_main.configure_cluster(hosts, 0) == {
        "cluster": {"chief": ["h0:2222"], "worker": ["h1:2222", "[::1]:2222"]},
        "task": {"type": "chief", "index": 0}}
    assert json.loads(os.environ["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
    del os.environ["TF_CONFIG"]
    assert cluster.tf_config_from_hosts(hosts, 2)["task"] == {"type": "worker", "index": 1}
    assert cluster.tf_config_from_hosts(hosts, None, "evaluator")["task"] == {
        "type": "evaluator", "index": 0}
    with pytest.raises(PipelineError, match=r"--task_index must be in \[0, 3\)"):
        cluster.tf_config_from_hosts(hosts, 3)


@pytest.mark.parametrize("tf_config, message", [
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     r"TF_CONFIG cluster.worker\[1\] 'b' has no port"),
    ('{"cluster": {"chief": ["a:1"], "worker": ["b:x"]}, "task": {"type": "chief", "index": 0}}',
     r"cluster.worker\[0\] 'b:x': the port 'x'"),
    ('{"cluster": {"worker": ["a:1"]}}', "has a cluster but no task"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     r"task worker 1 is not in cluster.worker \(1 entries\)"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'ps' is not one of"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "must be a list"),
    ('{"cluster": {', "TF_CONFIG is not valid JSON"),
])
def test_malformed_tf_config_is_a_one_line_error(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(PipelineError, match=message) as raised:
        imagenet_main.configure_cluster(None, None)
    assert "\n" not in str(raised.value)


# Role combinations TensorFlow's RunConfig itself rejects (with a ValueError traceback).
MALFORMED_ROLES = [
    ({"worker": ["a:1", "b:2"]}, {"type": "evaluator", "index": 0},
     r"an evaluator needs a chief in the cluster \(cluster has worker only\)"),
]


@pytest.mark.parametrize("cluster_jobs, task, message", MALFORMED_ROLES)
def test_role_combinations_the_estimator_rejects_are_one_line_errors(monkeypatch, cluster_jobs,
                                                                     task, message):
    tf_config = json.dumps({"cluster": cluster_jobs, "task": task})
    monkeypatch.setenv("TF_CONFIG", tf_config)
    # The oracle: the Estimator's own RunConfig refuses this TF_CONFIG.
    with pytest.raises(ValueError):
        tf.estimator.RunConfig()
    with pytest.raises(PipelineError, match=message) as raised:
        imagenet_main.configure_cluster(None, None)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("cluster_jobs, task, message", [
    # train_and_evaluate refuses it only once the evaluator has built its Estimator.
    ({"chief": ["a:1"], "worker": ["b:2"]}, {"type": "evaluator", "index": 1},
     "evaluator 1: a job has one evaluator, of index 0"),
    ({"master": ["a:1"], "worker": ["b:2"]}, {"type": "worker", "index": 0},
     "cluster.master: name it chief"),
    ({"chief": ["a:1"], "ps": ["b:2"]}, {"type": "chief", "index": 0},
     "cluster.ps: parameter servers are not supported"),
    ({"chief": ["a:1"], "evaluator": ["c:3", "d:4"]}, {"type": "chief", "index": 0},
     "cluster.evaluator has 2 entries; a job has at most one evaluator"),
    ({"chief": ["a:1"], "trainer": ["b:2"]}, {"type": "chief", "index": 0},
     "cluster.trainer: the jobs are chief, worker and evaluator"),
])
def test_other_roles_and_jobs_are_one_line_errors(monkeypatch, cluster_jobs, task, message):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster_jobs, "task": task}))
    with pytest.raises(PipelineError, match=message) as raised:
        imagenet_main.configure_cluster(None, None)
    assert "\n" not in str(raised.value)


def test_a_malformed_tf_config_stops_the_command_before_anything_runs(tmp_path):
    cluster_jobs, task, message = MALFORMED_ROLES[0]
    model_dir = tmp_path / "model"
    environment = dict(process_fixtures.environment(),
                       TF_CONFIG=json.dumps({"cluster": cluster_jobs, "task": task}))
    result = subprocess.run(
        [sys.executable, "-m", "official.xception.imagenet_main", f"--model_dir={model_dir}",
         "--use_synthetic_data", "--distribution_strategy=multi_worker_mirrored"],
        cwd=process_fixtures.REPO, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "rror" in line
              and "cuda" not in line.lower() and "factory" not in line]
    assert len(errors) == 1 and errors[0].startswith("error: TF_CONFIG: "), result.stderr
    assert "Traceback" not in result.stderr
    # Nothing ran: no checkpoint, no lock, no summary (the flags' check may have made the folder).
    assert not model_dir.exists() or not any(model_dir.iterdir())


def test_a_cluster_is_given_one_way_only(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"chief": ["a:1"]}, "task": {"type": "chief"}}')
    with pytest.raises(PipelineError, match="both TF_CONFIG and --worker_hosts"):
        imagenet_main.configure_cluster(["a:1"], 0)
    with pytest.raises(PipelineError, match="both TF_CONFIG and --slurm_cluster"):
        imagenet_main.configure_cluster(None, None, slurm_port=8888)
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(PipelineError, match="--task_type=evaluator goes with --worker_hosts"):
        imagenet_main.configure_cluster(None, None, task_type="evaluator")


SLURM_STEPS = [
    # (SLURM_PROCID, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE, tasks)
    ("0", "node[001-003]", "1(x3)", 3),
    ("2", "gpu-a[7,9],gpu-b1", "1(x3)", 3),
    ("3", "n[1-2]", "2(x2)", 4),
    ("0", "single", "1", 1),
]


@pytest.mark.parametrize("rank, nodes, tasks_per_node, tasks", SLURM_STEPS)
def test_slurm_cluster_is_what_tensorflows_resolver_gives(monkeypatch, rank, nodes,
                                                          tasks_per_node, tasks):
    for name, value in (("PROCID", rank), ("STEP_NUM_TASKS", str(tasks)),
                        ("STEP_NODELIST", nodes), ("STEP_TASKS_PER_NODE", tasks_per_node)):
        monkeypatch.setenv("SLURM_" + name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU node: no nvidia-smi is asked
    tf_config = imagenet_main.configure_cluster(None, None, slurm_port=7000)
    # The resolver's own cluster, all tasks as workers in Slurm's rank order, is the oracle.
    oracle = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=7000, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    ranked = oracle.cluster_spec().as_dict()["worker"]
    cluster_spec = tf_config["cluster"]
    assert cluster_spec["chief"] + cluster_spec.get("worker", []) == ranked
    expected_task = ({"type": "chief", "index": 0} if rank == "0"
                     else {"type": "worker", "index": int(rank) - 1})
    assert tf_config["task"] == expected_task
    assert json.loads(os.environ["TF_CONFIG"]) == tf_config


def _slurm_step(monkeypatch, rank, nodes, tasks_per_node, tasks):
    for name, value in (("PROCID", rank), ("STEP_NUM_TASKS", str(tasks)),
                        ("STEP_NODELIST", nodes), ("STEP_TASKS_PER_NODE", tasks_per_node)):
        monkeypatch.setenv("SLURM_" + name, value)


@pytest.mark.parametrize("visible", ["4,5", "3", "1,0"])
def test_slurm_tasks_keep_the_gpus_slurm_gave_them(monkeypatch, visible):
    # Two tasks on each of two nodes, one or two GPUs each: TensorFlow's resolver would renumber
    # 4,5 as 0,1 and fail on one GPU per task (range() arg 3 must not be zero).
    _slurm_step(monkeypatch, "1", "n[1-2]", "2(x2)", 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    tf_config = imagenet_main.configure_cluster(None, None, slurm_port=7000)
    assert tf_config["task"] == {"type": "worker", "index": 0}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == visible


def test_slurm_tasks_sharing_a_node_without_their_own_gpus_is_a_one_line_error(monkeypatch,
                                                                                tmp_path):
    # A node whose driver lists two GPUs (nvidia-smi -L's format) and no CUDA_VISIBLE_DEVICES.
    nvidia_smi = tmp_path / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\necho 'GPU 0: A100 (UUID: GPU-0)'\n"
                          "echo 'GPU 1: A100 (UUID: GPU-1)'\n")
    nvidia_smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _slurm_step(monkeypatch, "0", "n1,n2", "2,1", 3)
    with pytest.raises(PipelineError, match=r"several tasks share a node .* all 2 GPU\(s\) .*"
                                            "--gpus-per-task"):
        imagenet_main.configure_cluster(None, None, slurm_port=7000)
    _slurm_step(monkeypatch, "0", "n1,n2", "1(x2)", 2)  # one task per node: all its GPUs are its own
    assert imagenet_main.configure_cluster(None, None, slurm_port=7000)["task"]["type"] == "chief"


@pytest.mark.parametrize("name, value", [("PROCID", "a[$(touch x)0]"), ("STEP_NUM_TASKS", "2 "),
                                         ("STEP_TASKS_PER_NODE", "2(x2")])
def test_malformed_slurm_values_are_one_line_errors(monkeypatch, name, value):
    _slurm_step(monkeypatch, "0", "n[1-2]", "2(x2)", 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SLURM_" + name, value)
    with pytest.raises(PipelineError, match=f"SLURM_{name}=.* start each task with srun"):
        imagenet_main.configure_cluster(None, None, slurm_port=7000)


def test_slurm_outside_a_job_step_is_a_one_line_error(monkeypatch):
    for name in ("PROCID", "STEP_NUM_TASKS", "STEP_NODELIST", "STEP_TASKS_PER_NODE"):
        monkeypatch.delenv("SLURM_" + name, raising=False)
    with pytest.raises(PipelineError, match="SLURM_PROCID, .* not set: start each task with srun"):
        imagenet_main.configure_cluster(None, None, slurm_port=7000)


def test_an_unreachable_peer_is_an_error_naming_it_within_the_timeout():
    own, silent = (f"127.0.0.1:{port}" for port in process_fixtures.free_ports(2))
    tf_config = {"cluster": {"chief": [own], "worker": [silent]}, "task": {"type": "chief"}}
    started = time.monotonic()
    with pytest.raises(PipelineError, match=f"waited 1.5 s .* not answering: {silent}: ") as raised:
        cluster.wait_for_peers(tf_config, 1.5)
    assert 1.5 <= time.monotonic() - started < 6
    assert "\n" not in str(raised.value)


def test_peers_that_answer_are_joined_without_waiting():
    own, peer = (f"127.0.0.1:{port}" for port in process_fixtures.free_ports(2))
    with socket.create_server(("127.0.0.1", int(peer.split(":")[1]))):
        started = time.monotonic()
        cluster.wait_for_peers({"cluster": {"chief": [own], "worker": [peer]},
                                "task": {"type": "chief", "index": 0}}, 30)
        assert time.monotonic() - started < 5


def _main_process(*arguments):
    command = [sys.executable, "-m", "tests.tiny_imagenet_main", "--use_synthetic_data",
               "--distribution_strategy=multi_worker_mirrored", "--num_gpus=0", *arguments]
    environment = process_fixtures.environment()
    environment.pop("TF_CONFIG", None)
    return subprocess.Popen(command, cwd=process_fixtures.REPO, env=environment, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_main_rejects_an_empty_host_entry_in_one_line(tmp_path):
    # TensorFlow itself aborts the interpreter on this one (exit 134, a C++ stack dump).
    process = _main_process(f"--model_dir={tmp_path}", "--worker_hosts=127.0.0.1:1,,127.0.0.1:2",
                            "--task_index=0")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert _error_lines(stderr) == ["error: --worker_hosts entry 2 is empty: give host:port "
                                    "(comma-separated, no spaces, no empty entries)"]
    assert "Traceback" not in stderr


def test_main_waiting_for_a_missing_peer_stops_on_timeout_and_on_sigterm(tmp_path):
    ports = process_fixtures.free_ports(3)
    timed_out = _main_process(f"--model_dir={tmp_path / 'a'}", "--peer_timeout_secs=2",
                              f"--worker_hosts=127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}",
                              "--task_index=0")
    hosts = f"--worker_hosts=127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}"
    terminated = _main_process(f"--model_dir={tmp_path / 'b'}", hosts, "--task_index=1")
    try:
        _, stderr = timed_out.communicate(timeout=120)
        assert timed_out.returncode == 1
        [line] = _error_lines(stderr)
        assert line.startswith("error: chief 0 (127.0.0.1:%d) waited 2 s" % ports[0])
        assert line.endswith("or raise --peer_timeout_secs")
        # Worker 1 listens on its port while it waits for the chief.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ports[2]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        terminated.send_signal(signal.SIGTERM)
        _, stderr = terminated.communicate(timeout=10)
        assert terminated.returncode == 128 + signal.SIGTERM
        assert _error_lines(stderr) == ["error: SIGTERM while waiting for the other training tasks"]
    finally:
        for process in (timed_out, terminated):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_an_evaluator_whose_training_tasks_are_gone_stops_with_75(tmp_path):
    chief, worker = process_fixtures.free_ports(2)  # nothing listens there
    started = time.monotonic()
    evaluator = _main_process(f"--model_dir={tmp_path}", "--peer_timeout_secs=3",
                              f"--worker_hosts=127.0.0.1:{chief},127.0.0.1:{worker}",
                              "--task_type=evaluator", "--train_examples=64", "--batch_size=4")
    try:
        _, stderr = evaluator.communicate(timeout=120)
    finally:
        if evaluator.poll() is None:
            evaluator.kill()
            evaluator.wait()
    assert evaluator.returncode == cluster.PEER_LOST_EXIT_CODE, stderr[-3000:]
    assert _error_lines(stderr) == [
        f"error: evaluator 0 stops: lost chief 0 (127.0.0.1:{chief}), worker 0 (127.0.0.1:"
        f"{worker}); relaunch all tasks with the same command to resume from the last checkpoint "
        "(exit code 75)"]
    assert time.monotonic() - started < 60


_flags = main_flags.parse


def test_the_evaluator_evaluates_with_the_training_replicas_batch():
    tf_config = cluster.tf_config_from_hosts(["a:1", "b:1", "c:1"], None, "evaluator")
    placement = imagenet_main.make_placement("multi_worker_mirrored", 0, 2, None, tf_config)
    assert placement.strategy is None and not placement.is_chief
    # 3 training tasks of 2 CPU replicas each: 6 replicas, so a global batch of 48 is 8 per device.
    assert imagenet_main.per_replica_batch_size(48, placement.num_replicas) == 8
    # Its --num_gpus is each training task's, even on a machine with fewer (none here).
    on_gpus = imagenet_main.make_placement("multi_worker_mirrored", 4, 1, None, tf_config)
    assert on_gpus.num_replicas == 12 and on_gpus.num_gpus == len(
        tf.config.list_physical_devices("GPU")[:1])


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """A machine with one GPU, as far as imagenet_main can tell."""
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    list_devices = tf.config.list_physical_devices
    hidden = []
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else list_devices(kind))
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind=None: hidden.append((list(devices), kind)))
    return hidden


def test_num_gpus_zero_means_the_cpu_on_a_machine_with_a_gpu(one_fake_gpu):
    flag_values = _flags(num_gpus=0, batch_size=8)
    placement = imagenet_main.make_placement("mirrored", 0, 1, None, {})
    assert one_fake_gpu == [([], "GPU")]
    session_config = imagenet_main.make_run_config(flag_values, placement).session_config
    assert session_config.device_count["GPU"] == 0
    assert imagenet_main.make_model_config(flag_values, 8).data_format == "channels_last"
    with pytest.raises(PipelineError, match="channels_first needs a GPU and --num_gpus=0"):
        imagenet_main.make_model_config(_flags(num_gpus=0, data_format="channels_first"), 8)

    # The default uses the GPU, in its layout.
    all_gpus = imagenet_main.make_placement("mirrored", -1, 1, None, {})
    assert "GPU" not in imagenet_main.make_run_config(_flags(), all_gpus).session_config.device_count
    assert imagenet_main.make_model_config(_flags(), 8).data_format == "channels_first"


def test_multi_worker_checkpoints_every_1000_steps_and_a_non_chief_keeps_one():
    chief = imagenet_main.Placement(None, 2, 1, is_chief=True, multi_worker=True)
    non_chief = imagenet_main.Placement(None, 2, 1, is_chief=False, multi_worker=True)
    alone = imagenet_main.Placement(None, 1, 1, is_chief=True, multi_worker=False)
    flag_values = _flags(model_dir="m", keep_checkpoint_max=4)
    configs = [imagenet_main.make_run_config(flag_values, placement)
               for placement in (chief, non_chief, alone)]
    assert [config.keep_checkpoint_max for config in configs] == [4, 1, 4]
    assert [config.save_checkpoints_steps for config in configs] == [1000, 1000, None]
    assert configs[2].save_checkpoints_secs == 600
    flag_values = _flags(model_dir="m", save_checkpoints_steps=7)
    assert imagenet_main.make_run_config(flag_values, chief).save_checkpoints_steps == 7


@pytest.mark.parametrize("flags_given, message", [
    (dict(peer_timeout_secs="nan"), "--peer_timeout_secs=nan: must be a positive finite number"),
    (dict(peer_timeout_secs="inf"), "--peer_timeout_secs=inf: must be a positive finite number"),
    (dict(peer_timeout_secs="0"), "--peer_timeout_secs=0.0: must be a positive finite number"),
    (dict(batch_size=3), "--batch_size=3 is the global batch and must divide evenly by the 2 "
                         "training tasks' replicas"),
])
def test_bad_cluster_numbers_are_one_line_errors_before_waiting_for_peers(tmp_path, flags_given,
                                                                          message):
    started = time.monotonic()
    with pytest.raises(PipelineError, match=re.escape(message)):
        imagenet_main.run(_flags(model_dir=tmp_path, use_synthetic_data=True, num_gpus=0,
                                 worker_hosts="127.0.0.1:1,127.0.0.1:2", task_index=0,
                                 distribution_strategy="multi_worker_mirrored", **flags_given))
    assert time.monotonic() - started < 10  # no peer (none exists) was waited for


@pytest.mark.parametrize("flag", ["--stop_threshold=0.5", "--epochs_between_evals=2"])
def test_single_machine_flags_are_refused_on_several_machines(tmp_path, flag):
    name, value = flag[2:].split("=")
    with pytest.raises(PipelineError, match=f"^--{name} apply to one machine; several machines "
                                            "train to --train_epochs"):
        imagenet_main.run(_flags(model_dir=tmp_path, use_synthetic_data=True,
                                 worker_hosts="a:1,b:2", task_index=0, distribution_strategy="multi_worker_mirrored",
                                 **{name: value}))
    assert not any(tmp_path.iterdir())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
