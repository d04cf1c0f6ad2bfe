"""Helpers for tests that run the project's commands as processes."""

import os
import resource
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment():
    """The environment of a child process that imports the project from this checkout."""
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


def run_module(module, *args, limit_file_size=None, timeout=300):
    """Runs `python -m module args` and returns the CompletedProcess (text output captured).

    `limit_file_size` (bytes) sets RLIMIT_FSIZE in the child: writes past it fail with EFBIG, which
    stands in for a full disk without needing root.
    """
    preexec = None
    if limit_file_size is not None:
        def preexec():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


def free_ports(count):
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
