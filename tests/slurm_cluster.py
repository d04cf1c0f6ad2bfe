"""A real one-node Slurm cluster on this machine for tests: Debian's munge, slurmctld and slurmd,
installed by tools/install_slurm.sh when missing, configured in a temporary directory on free
ports of 127.0.0.1, and stopped by their process ids.

Process tracking by /proc (proctrack/linuxproc) and no task plugin (task/none) need no cgroups;
the node has 2 CPUs, so `srun -n 2` runs two tasks here.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

from tests import process_fixtures

INSTALL_SCRIPT = os.path.realpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "install_slurm.sh"))
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin")


def _tool(name):
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    raise FileNotFoundError(name)


def install():
    """None once Slurm and munge are installed, else why they cannot be (for pytest.skip).
    Raises RuntimeError when apt-get is there but fails."""
    result = subprocess.run(["bash", INSTALL_SCRIPT], capture_output=True, text=True, timeout=600,
                            check=False)
    if result.returncode == 2:
        return result.stderr.strip()
    if result.returncode != 0:
        raise RuntimeError(f"tools/install_slurm.sh failed:\n{result.stderr[-3000:]}")
    return None


def _write_config(directory, node, ctld_port, slurmd_port, munge_socket):
    state = os.path.join(directory, "state")
    spool = os.path.join(directory, "spool")
    os.makedirs(state)
    os.makedirs(spool)
    path = os.path.join(directory, "slurm.conf")
    with open(path, "w") as config:
        config.write(f"""\
ClusterName=pipelinetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# sbatch --wait polls the job every 2 s, then 8 s, then 32 s, unless MinJobAge is under twice the
# interval (so that a finished job is still there at the next poll): the tests wait for their batch
# jobs, and 32 s polls would add up to half a minute to each.
MinJobAge=4
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return path


def _wait_for(predicate, timeout, what, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = []
    for log in logs:
        if os.path.exists(log):
            with open(log, errors="replace") as handle:
                tails.append(f"--- {log}\n" + "".join(handle.readlines()[-15:]))
    raise RuntimeError(f"{what} within {timeout} s\n" + "\n".join(tails))


class Cluster:
    """The running daemons; `environment()` is what srun/sbatch need to reach them."""

    def __init__(self, directory):
        self.directory = directory
        self.node = socket.gethostname().split(".")[0]
        self._daemons = []
        munge_socket = os.path.join(directory, "munge.socket")
        ctld_port, slurmd_port = process_fixtures.free_ports(2)
        self.config = _write_config(directory, self.node, ctld_port, slurmd_port, munge_socket)
        key = os.path.join(directory, "munge.key")
        with open(key, "wb") as handle:
            handle.write(os.urandom(1024))
        os.chmod(key, 0o400)
        os.chmod(directory, 0o755)  # munged refuses a socket folder others may write to
        self._start([_tool("munged"), "--foreground", "--force", f"--socket={munge_socket}",
                     f"--key-file={key}", f"--pid-file={directory}/munged.pid",
                     f"--log-file={directory}/munged.log", f"--seed-file={directory}/munge.seed"])
        _wait_for(lambda: os.path.exists(munge_socket), 20, "munged did not open its socket",
                  [f"{directory}/munged.log"])
        logs = [f"{directory}/slurmctld.log", f"{directory}/slurmd.log"]
        self._start([_tool("slurmctld"), "-D", "-i", "-f", self.config])
        self._start([_tool("slurmd"), "-D", "-f", self.config, "-N", self.node])
        _wait_for(self._node_is_idle, 60, "the Slurm node did not become idle", logs)

    def _start(self, command):
        with open(os.path.join(self.directory, os.path.basename(command[0]) + ".out"), "w") as log:
            self._daemons.append(subprocess.Popen(command, env=self.environment(), stdout=log,
                                                  stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL))

    def _node_is_idle(self):
        for daemon in self._daemons:
            if daemon.poll() is not None:
                raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}; see "
                                   f"{self.directory}")
        result = subprocess.run([_tool("sinfo"), "-h", "-N", "-o", "%t"], env=self.environment(),
                                capture_output=True, text=True, timeout=10, check=False)
        return result.stdout.strip() == "idle"

    def environment(self, **updates):
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("SLURM")}
        environment.update(SLURM_CONF=self.config, **updates)
        return environment

    def run(self, command, timeout, **environment):
        """Runs `command` (srun, sbatch, ...) against this cluster; returns the CompletedProcess."""
        return subprocess.run(command, env=self.environment(**environment), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def stop(self):
        """Stops the daemons by their process ids, last started first."""
        for daemon in reversed(self._daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(timeout=10)
        self._daemons = []
