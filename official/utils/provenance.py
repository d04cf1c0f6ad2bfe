"""What produced a result: the code's commit, the library versions, the machine, as JSON records
appended to a file beside the result (one JSON object per line), never rewritten in place.

- environment(): the generic part of a record (time, host, command line, git state, versions,
  devices); callers add what their run is (flags, data, cluster) under their own keys.
- append_record / read_records: the JSON-lines file, appended through a temporary copy and a rename,
  so that a crash or a full disk never leaves a half-written line or loses earlier ones.
- file_sha256: the digest that names an input file (a dataset summary, converted weights).
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys

import tensorflow as tf

from official.utils.errors import PipelineError

RECORD_NAME = "provenance.jsonl"
# The checkout whose code runs: two levels above this file (official/utils/).
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_GIT_TIMEOUT_SECS = 10


def _git(arguments, source_root):
    return subprocess.run(["git", "-C", source_root, *arguments], capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_SECS, check=True).stdout.strip()


def git_state(source_root=_SOURCE_ROOT):
    """{"commit", "dirty"} of the checkout at `source_root`; {"commit": None, "reason"} when it is not
    a git checkout (an installed copy, a container image without .git) or git is missing."""
    try:
        commit = _git(["rev-parse", "HEAD"], source_root)
        # Untracked files count: a new module changes what runs as much as an edited one.
        dirty = bool(_git(["status", "--porcelain"], source_root))
    except FileNotFoundError:
        return {"commit": None, "reason": "git is not installed"}
    except subprocess.TimeoutExpired:
        return {"commit": None, "reason": "git did not answer"}
    except subprocess.CalledProcessError as error:
        if "not a git repository" in error.stderr:
            return {"commit": None, "reason": f"{source_root} is not a git checkout"}
        # E.g. a checkout owned by another user ("dubious ownership").
        message = (error.stderr.strip().splitlines() or ["no message"])[0]
        return {"commit": None, "reason": f"git failed in {source_root}: {message}"}
    return {"commit": commit, "dirty": dirty}


def _distribution_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions():
    """Python, TensorFlow, Keras, numpy, and the CUDA and cuDNN versions TensorFlow was built for."""
    build = tf.sysconfig.get_build_info()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": _distribution_version("keras"),
        "numpy": _distribution_version("numpy"),
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
    }


def local_devices():
    """[{"type", "name"}] of the devices TensorFlow sees (GPUs with their model name)."""
    devices = []
    for device in tf.config.list_physical_devices():
        entry = {"type": device.device_type, "name": device.name}
        if device.device_type == "GPU":
            entry["model"] = tf.config.experimental.get_device_details(device).get("device_name")
        devices.append(entry)
    return devices


def environment(event):
    """The generic part of a record: what happened (`event`), when, where, with which code."""
    return {
        "event": event,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "git": git_state(),
        "versions": library_versions(),
        "devices": local_devices(),
    }


def file_sha256(path):
    """Hex SHA-256 of a file (read through tf.io.gfile, so gs:// paths work too)."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def append_record(directory, record, name=RECORD_NAME):
    """Appends `record` as one JSON line to `directory/name`.

    The file is copied with the new line to a temporary name and renamed over the old one: readers
    see the old file or the new one, never half a line, and a full disk loses nothing written before.
    One writer at a time (the caller holds the directory's lock).
    """
    path = os.path.join(directory, name)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    old = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "r") as handle:
            old = handle.read()
        if old and not old.endswith("\n"):
            old += "\n"
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with tf.io.gfile.GFile(temporary, "w") as handle:
            handle.write(old + line)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
    return path


def read_records(path):
    """The records of a JSON-lines file ([] when it does not exist).

    Raises:
      PipelineError: a line is not a JSON object.
    """
    if not tf.io.gfile.exists(path):
        return []
    records = []
    with tf.io.gfile.GFile(path, "r") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                raise PipelineError(f"{path}, line {number}, is not a JSON record: was the file "
                                    "edited by hand? Remove that line")
            records.append(record)
    return records


def describe_environment(record):
    """One line: the code, libraries and devices of a record."""
    git = record.get("git", {})
    if git.get("commit"):
        code = f"commit {git['commit'][:12]}" + (" (with uncommitted changes)" if git.get("dirty")
                                                 else "")
    else:
        code = f"unknown commit ({git.get('reason', 'not recorded')})"
    versions = record.get("versions", {})
    libraries = (f"Python {versions.get('python')}, TensorFlow {versions.get('tensorflow')} (built "
                 f"for CUDA {versions.get('cuda') or '-'}, cuDNN {versions.get('cudnn') or '-'})")
    kinds = {}
    for device in record.get("devices", []):
        kind = device.get("model") or device.get("type", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
    devices = ", ".join(f"{count} x {kind}" for kind, count in kinds.items())
    return (f"{record.get('event', '?')} at {record.get('time', '?')} on {record.get('host', '?')}: "
            f"{code}; {libraries}; devices {devices or 'not recorded'}")
