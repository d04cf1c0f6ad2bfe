"""The cluster of a multi-worker job: its TF_CONFIG from a host list or from a Slurm job step,
checked before TensorFlow sees it, and a bounded wait for the peers.

TensorFlow aborts the interpreter on some malformed addresses and waits forever (ignoring SIGTERM)
for peers that never answer; everything here turns those into one-line errors.
"""

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import tensorflow as tf

from official.utils.errors import PipelineError

# The tasks that train; an "evaluator" is not part of the training cluster (as in Kubeflow's TFJob).
TRAINING_JOBS = ("chief", "worker")
EVALUATOR = "evaluator"

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")


def check_address(address, where):
    """Raises PipelineError unless `address` is host:port (an IPv6 host in brackets)."""
    if not isinstance(address, str) or not address.strip():
        raise PipelineError(f"{where} is empty: give host:port (comma-separated, no spaces, "
                            "no empty entries)")
    if any(character.isspace() for character in address):
        raise PipelineError(f"{where} {address!r} contains whitespace: separate host:port entries "
                            "with commas, not spaces")
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise PipelineError(f"{where} {address!r} has no port: give host:port, e.g. {address}:2222")
    if not _HOST.match(host):
        raise PipelineError(f"{where} {address!r}: {host!r} is not a host name or IP address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise PipelineError(f"{where} {address!r}: the port {port!r} is not a number in 1..65535")


def _check_training_cluster(cluster, source):
    if not isinstance(cluster, dict):
        raise PipelineError(f"{source}: \"cluster\" must map job names to lists of host:port")
    seen = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list):
            raise PipelineError(f"{source}: cluster.{job} must be a list of host:port")
        for index, address in enumerate(addresses):
            where = f"{source} cluster.{job}[{index}]"
            check_address(address, where)
            if address in seen:
                raise PipelineError(f"{where} {address!r} is also {seen[address]}: every task "
                                    "needs its own host:port")
            seen[address] = where
    for job in cluster:
        if job not in TRAINING_JOBS + (EVALUATOR,):
            advice = {"master": "name it chief (TFJob: a Chief replica)",
                      "ps": "parameter servers are not supported: train with chief and workers"}
            raise PipelineError(f"{source}: cluster.{job}: "
                                + advice.get(job, "the jobs are chief, worker and evaluator"))
    if len(cluster.get(EVALUATOR, [])) > 1:
        raise PipelineError(f"{source}: cluster.evaluator has {len(cluster[EVALUATOR])} entries; "
                            "a job has at most one evaluator")
    if len(cluster.get("chief", [])) > 1:
        raise PipelineError(f"{source}: cluster.chief has {len(cluster['chief'])} entries; a "
                            "cluster has at most one chief")
    if not any(cluster.get(job) for job in TRAINING_JOBS):
        raise PipelineError(f"{source}: the cluster has no chief or worker task")


def check_tf_config(tf_config, source="TF_CONFIG"):
    """Raises PipelineError unless `tf_config` (a dict) describes a training cluster this task is in.

    Args:
      tf_config: the parsed TF_CONFIG: {"cluster": {job: [host:port]}, "task": {"type", "index"}}.
      source: where it came from, for the messages.
    """
    if not isinstance(tf_config, dict):
        raise PipelineError(f"{source} must be a JSON object with \"cluster\" and \"task\"")
    cluster = tf_config.get("cluster")
    if not cluster:
        return
    _check_training_cluster(cluster, source)
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise PipelineError(f"{source} has a cluster but no task: add \"task\": {{\"type\": "
                            "\"worker\", \"index\": <this machine's index>}")
    task_type, index = task["type"], task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise PipelineError(f"{source}: task.index must be a non-negative integer, got {index!r}")
    if task_type == EVALUATOR:
        if index != 0:
            raise PipelineError(f"{source}: evaluator {index}: a job has one evaluator, of index 0 "
                                "(TFJob: Evaluator replicas: 1)")
        if not cluster.get("chief"):
            raise PipelineError(f"{source}: an evaluator needs a chief in the cluster (cluster has "
                                f"{', '.join(sorted(cluster))} only): name the first training "
                                "task cluster.chief (TFJob: a Chief replica; --worker_hosts: its "
                                "first host)")
        return
    if task_type not in TRAINING_JOBS:
        raise PipelineError(f"{source}: task.type {task_type!r} is not one of chief, worker, "
                            "evaluator (parameter servers are not supported)")
    if index >= len(cluster.get(task_type, [])):
        raise PipelineError(f"{source}: task {task_type} {index} is not in cluster.{task_type} "
                            f"({len(cluster.get(task_type, []))} entries)")


def tf_config_from_hosts(worker_hosts, task_index, task_type="worker"):
    """TF_CONFIG for --worker_hosts: the first host is the chief, the others are workers, in the
    layout Kubeflow's TFJob writes, so that an evaluator can join the same way.

    Args:
      worker_hosts: host:port of every training task, the chief first.
      task_index: this task's index in `worker_hosts` (ignored for the evaluator).
      task_type: "worker" for a training task, "evaluator" for the evaluator.
    """
    hosts = list(worker_hosts)
    for index, address in enumerate(hosts):
        check_address(address, f"--worker_hosts entry {index + 1}")
        if address in hosts[:index]:
            raise PipelineError(f"--worker_hosts entry {index + 1} {address!r} repeats entry "
                                f"{hosts.index(address) + 1}: every task needs its own host:port")
    cluster = {"chief": hosts[:1]}
    if len(hosts) > 1:
        cluster["worker"] = hosts[1:]
    _check_training_cluster(cluster, "--worker_hosts")
    if task_type == EVALUATOR:
        return {"cluster": cluster, "task": {"type": EVALUATOR, "index": 0}}
    if task_index is None or not 0 <= task_index < len(hosts):
        raise PipelineError(f"--task_index must be in [0, {len(hosts)}) for {len(hosts)} "
                            f"--worker_hosts, got {task_index}")
    task = {"type": "chief", "index": 0} if task_index == 0 else {"type": "worker",
                                                                  "index": task_index - 1}
    return {"cluster": cluster, "task": task}


def _most_tasks_on_a_node(tasks_per_node):
    """The largest count in Slurm's SLURM_STEP_TASKS_PER_NODE, e.g. 2 for "2(x3),1"."""
    counts = re.findall(r"(\d+)(?:\(x\d+\))?(?:,|$)", tasks_per_node)
    if not counts or ",".join(f"{count}" for count in counts) != re.sub(r"\(x\d+\)", "",
                                                                        tasks_per_node):
        raise PipelineError(f"--slurm_cluster: SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r} is not "
                            "Slurm's list of task counts (e.g. 2(x3),1): start each task with srun")
    return max(int(count) for count in counts)


def _nvidia_smi_gpus():
    if not shutil.which("nvidia-smi"):
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _check_own_gpus(tasks_per_node):
    """Raises PipelineError where the tasks of a node would all take all of its GPUs: Slurm gave
    them no CUDA_VISIBLE_DEVICES of their own."""
    if _most_tasks_on_a_node(tasks_per_node) < 2 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    gpus = _nvidia_smi_gpus()
    if gpus:
        raise PipelineError(
            f"--slurm_cluster: several tasks share a node ({tasks_per_node} per node) and Slurm set "
            f"no CUDA_VISIBLE_DEVICES, so each would use all {gpus} GPU(s) of its node: ask srun for "
            "--gpus-per-task=N (or run one task per node)")


def tf_config_from_slurm(port):
    """TF_CONFIG for this task of a Slurm job step (srun), through TensorFlow's SlurmClusterResolver:
    Slurm task 0 is the chief, the others are workers; a node's tasks listen on port, port+1, ...

    Each task uses the GPUs Slurm gave it (its CUDA_VISIBLE_DEVICES, untouched): the resolver's own
    GPU sharing would renumber them (4,5 becomes 0,1, another job's GPUs without device cgroups) and
    cannot share one GPU among fewer than one task each, so it is handed one pretend device per task
    and told not to set any.
    """
    missing = [name for name in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                                 "SLURM_STEP_TASKS_PER_NODE") if name not in os.environ]
    if missing:
        raise PipelineError(f"--slurm_cluster: {', '.join(missing)} not set: start each task "
                            "with srun inside the allocation (one task per node)")
    for name in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        if not os.environ[name].isdigit():
            raise PipelineError(f"--slurm_cluster: {name}={os.environ[name]!r} is not a number: "
                                "start each task with srun")
    num_tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    _check_own_gpus(os.environ["SLURM_STEP_TASKS_PER_NODE"])
    jobs = {"chief": 1}
    if num_tasks > 1:
        jobs["worker"] = num_tasks - 1
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            jobs=jobs, port_base=port, gpus_per_node=num_tasks, gpus_per_task=1, auto_set_gpu=False)
        cluster = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError) as error:
        raise PipelineError(f"--slurm_cluster: {error}".replace("\n", " ")) from None
    task_type, task_id = resolver.get_task_info()
    return {"cluster": cluster, "task": {"type": task_type, "index": task_id}}


def training_task_count(tf_config):
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in TRAINING_JOBS)


def _own_address(tf_config):
    task = tf_config["task"]
    return tf_config["cluster"][task["type"]][task.get("index", 0)]


def _split_address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _answers(address):
    try:
        socket.create_connection(_split_address(address), timeout=2).close()
        return True
    except OSError:
        return False


def _listen(port):
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))


def wait_for_peers(tf_config, timeout_secs, poll_secs=0.5):
    """Returns once every other training task of `tf_config` accepts connections; raises
    PipelineError naming the silent ones after `timeout_secs`.

    TensorFlow's own wait for the peers has no bound, holds the interpreter lock (so no Python
    watchdog can run) and replaces the SIGTERM handler with one that only logs. So the tasks meet
    here first, each listening on its own port until it has reached all the others: TensorFlow then
    finds every peer up at once. A task that has moved on answers on the same port through
    TensorFlow's server.
    """
    own = _own_address(tf_config)
    task = tf_config["task"]
    pending = [address for job in TRAINING_JOBS
               for address in tf_config["cluster"].get(job, []) if address != own]
    try:
        listener = _listen(_split_address(own)[1])
    except OSError as error:
        raise PipelineError(f"this task's address {own} (TF_CONFIG cluster.{task['type']}"
                            f"[{task.get('index', 0)}]) cannot be listened on: {error.strerror}; "
                            "is another process using the port?") from None
    deadline = time.monotonic() + timeout_secs
    try:
        while True:
            pending = [address for address in pending if not _answers(address)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"{task['type']} {task.get('index', 0)} ({own}) waited {timeout_secs:g} s for "
                    f"the other training tasks; not answering: {', '.join(pending)}: start every "
                    "task with the same cluster, check host names, ports and firewalls, or raise "
                    "--peer_timeout_secs")
            time.sleep(poll_secs)
    finally:
        listener.close()


def join_cluster(make_strategy, tf_config, timeout_secs):
    """make_strategy() once all training tasks are up (see `wait_for_peers`), with SIGTERM ending
    the process while it waits and afterwards (TensorFlow's handler would only log it)."""

    def terminated(signum, frame):
        del signum, frame
        sys.stderr.write("error: SIGTERM while waiting for the other training tasks\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)  # pylint: disable=protected-access

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, terminated)
    wait_for_peers(tf_config, timeout_secs)
    strategy = make_strategy()
    if in_main_thread:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return strategy


# The exit code of a task that stopped because another task of its job was lost (EX_TEMPFAIL):
# relaunching every task with the same command resumes from the last checkpoint. Launchers retry on
# it; any other non-zero code (bad input, a bad flag) is final.
PEER_LOST_EXIT_CODE = 75

# TensorFlow's collective errors name the remote task as /job:<type>/replica:0/task:<index>.
_REMOTE_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
# MonitoredSession logs this (after "A" or "a") when an Aborted or Unavailable error made it decide
# to create a new session (restoring the last checkpoint), during a step or while creating one. Under
# a collective strategy a new session meets the same lost peer, so it would restore again and again.
_SESSION_RECREATED = " new session will be created"


def _task_name(tf_config, task_type, index):
    addresses = tf_config.get("cluster", {}).get(task_type, [])
    address = f" ({addresses[index]})" if index < len(addresses) else ""
    return f"{task_type} {index}{address}"


def lost_peers(tf_config, error_text=""):
    """The other training tasks that `error_text` names, else those no longer accepting
    connections, as "type index (host:port)"."""
    own = (tf_config["task"]["type"], tf_config["task"].get("index", 0))
    named = []
    for task_type, index in _REMOTE_TASK.findall(error_text):
        if (task_type, int(index)) != own:
            name = _task_name(tf_config, task_type, int(index))
            if name not in named:
                named.append(name)
    if named:
        return named
    return [_task_name(tf_config, task_type, index)
            for task_type in TRAINING_JOBS
            for index, address in enumerate(tf_config["cluster"].get(task_type, []))
            if (task_type, index) != own and not _answers(address)]


def exit_peer_lost(tf_config, error_text="", timeout_secs=None):
    """Ends this process with PEER_LOST_EXIT_CODE and one line naming the lost peer.

    os._exit, because a collective strategy with a dead peer can hang in its teardown. Checkpoints
    are written to a temporary name and renamed, so no half-written one is left behind.
    """
    peers = lost_peers(tf_config, error_text)
    if not peers:
        # A peer that hangs (or whose machine vanished) still holds its connections open.
        peers = ["a peer that did not answer a collective" + (
            f" within --peer_timeout_secs={timeout_secs:g}" if timeout_secs else "")]
    own = _task_name(tf_config, tf_config["task"]["type"], tf_config["task"].get("index", 0))
    sys.stdout.flush()
    for handler in logging.getLogger().handlers + tf.get_logger().handlers:
        handler.flush()
    sys.stderr.write(f"error: {own} stops: lost {', '.join(peers)}; relaunch all tasks with the "
                     f"same command to resume from the last checkpoint (exit code "
                     f"{PEER_LOST_EXIT_CODE})\n")
    sys.stderr.flush()
    os._exit(PEER_LOST_EXIT_CODE)  # pylint: disable=protected-access


class _SessionRecreationWatch(logging.Filter):
    """Ends the process where MonitoredSession would re-create its session after a peer's error.

    A filter on TensorFlow's logger at INFO, so that it sees the (INFO) decision whatever the
    verbosity; it passes on only the records the logger would have passed without it.
    """

    def __init__(self, tf_config, passed_level):
        super().__init__()
        self._tf_config = tf_config
        self._passed_level = passed_level

    def filter(self, record):
        message = record.getMessage()
        if _SESSION_RECREATED in message:
            exit_peer_lost(self._tf_config, message)
        return record.levelno >= self._passed_level


# How TensorFlow prefixes the error a collective receives when another participant failed.
_PEER_ABORT = "Collective ops is aborted by"


@contextlib.contextmanager
def peer_loss_ends_task(tf_config, timeout_secs):
    """Within it, losing another training task ends this one with PEER_LOST_EXIT_CODE: when
    MonitoredSession would re-create its session, or when a collective fails or times out (after
    `timeout_secs`, the strategy's CommunicationOptions)."""
    logger = tf.get_logger()
    level = logger.level
    watch = _SessionRecreationWatch(tf_config, logger.getEffectiveLevel())
    logger.addFilter(watch)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError, tf.errors.CancelledError) as error:
        exit_peer_lost(tf_config, error.message, timeout_secs)
    except tf.errors.OpError as error:
        # A peer that fails on its own (a corrupt record, a NaN loss) aborts the collective it was
        # in, and the others receive its error, with its code, under this prefix: that peer reports
        # the error itself; here it is a lost peer.
        if _PEER_ABORT not in error.message:
            raise
        exit_peer_lost(tf_config, error.message, timeout_secs)
    finally:
        logger.removeFilter(watch)
        logger.setLevel(level)


def end_evaluator_when_training_is_lost(tf_config, timeout_secs, training_finished, poll_secs=1.0):
    """Starts a daemon thread that ends this evaluator with PEER_LOST_EXIT_CODE once no training task
    has accepted a connection for `timeout_secs` while `training_finished()` is False.

    The evaluator takes part in no collective, so nothing else tells it that the training tasks are
    gone; a relaunch within `timeout_secs` keeps it evaluating.
    """
    addresses = [address for job in TRAINING_JOBS for address in tf_config["cluster"].get(job, [])]

    def watch():
        last_answer = time.monotonic()
        while True:
            if any(_answers(address) for address in addresses):
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > timeout_secs and not training_finished():
                exit_peer_lost(tf_config, timeout_secs=timeout_secs)
            time.sleep(poll_secs)

    threading.Thread(target=watch, name="training-task-watch", daemon=True).start()
