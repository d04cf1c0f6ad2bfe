"""deploy/kubernetes/tfjob.yaml agrees with the failure model (docs/DESIGN.md §7.4): read as the
Kubeflow training operator reads it, every replica restarts on a lost peer (exit 75, which the
container turns into a code the operator's ExitCode policy retries) and on a kill, never on bad
input; and the TF_CONFIG the operator writes into each pod is one this pipeline accepts."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from official.utils import cluster
from tests import process_fixtures

TFJOB = os.path.join(process_fixtures.REPO, "deploy", "kubernetes", "tfjob.yaml")
NAMESPACE = "default"
DEFAULT_PORT = 2222  # the operator's, for a replica without a port named tfjob-port


def operator_restarts(exit_code):
    """The training operator's ExitCode policy (its train_util.IsRetryableExitCode): 128-255 are
    retryable, 1-127 permanent."""
    return exit_code >= 128


@pytest.fixture(scope="module")
def tfjob():
    with open(TFJOB, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _container(replica_spec):
    (container,) = replica_spec["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the container whose exit code the operator reads
    return container


def _operator_tf_configs(tfjob):
    """{(type, index): TF_CONFIG} as the operator writes it: every replica type (lower case) in the
    cluster, each replica at its service's name and port."""
    name, specs = tfjob["metadata"]["name"], tfjob["spec"]["tfReplicaSpecs"]
    cluster_spec = {}
    for replica_type, spec in specs.items():
        ports = [port["containerPort"] for port in _container(spec).get("ports", [])
                 if port.get("name") == "tfjob-port"]
        port = ports[0] if ports else DEFAULT_PORT
        job = replica_type.lower()
        cluster_spec[job] = [f"{name}-{job}-{index}.{NAMESPACE}.svc:{port}"
                             for index in range(spec.get("replicas", 1))]
    return {(job, index): {"cluster": cluster_spec, "task": {"type": job, "index": index},
                           "environment": "cloud"}
            for job, addresses in cluster_spec.items() for index in range(len(addresses))}


def test_every_pods_tf_config_is_accepted_with_one_chief_and_one_evaluator(tfjob):
    configs = _operator_tf_configs(tfjob)
    assert {job for job, _ in configs} == {"chief", "worker", "evaluator"}
    assert len([key for key in configs if key[0] == "chief"]) == 1
    assert len([key for key in configs if key[0] == "evaluator"]) == 1
    for tf_config in configs.values():
        cluster.check_tf_config(tf_config)


def test_every_replica_restarts_on_a_lost_peer_and_a_kill_but_not_on_bad_input(tfjob, tmp_path):
    specs = tfjob["spec"]["tfReplicaSpecs"]
    # A pod left behind while the others restart would wait for a cluster that no longer exists.
    assert {spec["restartPolicy"] for spec in specs.values()} == {"ExitCode"}
    commands = {json.dumps(_container(spec)["command"]) for spec in specs.values()}
    (command,) = commands
    command = json.loads(command)
    # The container's command around a stand-in for run_imagenet.sh that exits as told.
    stand_in = tmp_path / "run_imagenet.sh"
    stand_in.write_text('#!/bin/bash\necho "args: $*"\nexit "$EXIT_CODE"\n')
    stand_in.chmod(0o755)
    for exit_code, restarted in ((0, False), (1, False), (2, False),
                                 (cluster.PEER_LOST_EXIT_CODE, True), (137, True)):
        result = subprocess.run(command + ["--batch_size=8", "--x=a b"], cwd=tmp_path,
                                env=dict(os.environ, EXIT_CODE=str(exit_code)),
                                capture_output=True, text=True, timeout=30)
        assert result.stdout == "args: --batch_size=8 --x=a b\n"
        assert operator_restarts(result.returncode) == restarted, (exit_code, result.returncode)
        if not restarted:
            assert result.returncode == exit_code


def test_training_replicas_run_the_same_command_and_bound_the_wait_for_peers(tfjob):
    specs = tfjob["spec"]["tfReplicaSpecs"]
    args = {json.dumps(_container(spec)["args"]) for spec in specs.values()}
    assert len(args) == 1  # the evaluator too: its batch is the training replicas'
    assert any(arg.startswith("--peer_timeout_secs=") for arg in json.loads(args.pop()))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
