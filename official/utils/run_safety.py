"""What lets a long run fail in one line before any work, and never run twice into one directory.

- writable_directory, writable_file: output locations, checked before anything is read or written.
- lock_model_dir: one training process per model directory and task, so that a launcher restarted
  while the first run still trains cannot write checkpoints over it.
- io_error_message: a full disk or a file-size limit named as such, with the directory it hit.
- remove_save_leftovers: what a save killed half-way leaves (a checkpoint's `_temp` files).
"""

import errno
import fcntl
import os
import re
import shutil
import socket
import time

from official.utils.errors import PipelineError

LOCK_PREFIX = ".lock-"
# TensorFlow's saver writes a checkpoint's shards under `<prefix>_temp...` and renames them into place
# when complete; a run killed in between leaves them (hundreds of MB) to nobody.
_CHECKPOINT_TEMPORARY = re.compile(r"^.+\.ckpt-\d+_temp")
_SPACE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file size limit was reached",
                 errno.EDQUOT: "the disk quota is exceeded"}
_SPACE_MESSAGES = {os.strerror(code): reason for code, reason in _SPACE_ERRORS.items()}

# The open lock files of this process, by path: held until the process ends (the kernel drops an
# flock when its holder dies, so a killed run leaves nothing stuck), and taken again for free by a
# later run() in the same process.
_HELD_LOCKS = {}


def is_local_path(path):
    return "://" not in path


def writable_directory(path, flag):
    """Creates local directory `path` if needed and proves it writable; raises PipelineError."""
    if not is_local_path(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise PipelineError(f"{flag}={path} is a file, not a directory: give a directory path")
    try:
        os.makedirs(path, exist_ok=True)
        # os.access says yes to root on a read-only mount: only a real write tells.
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PipelineError(f"{flag}={path} is not writable ({error.strerror}): give a directory "
                            "you can write to") from None


def writable_file(path, flag):
    """Proves that local file `path` can be created (without touching an existing one)."""
    if os.path.isdir(path):
        raise PipelineError(f"{flag}={path} is a directory: give a file path")
    writable_directory(os.path.dirname(os.path.abspath(path)), f"{flag} (its directory)")


def task_name(tf_config):
    """'train' for a single process, else the TF_CONFIG task, e.g. 'worker-1' or 'evaluator-0'."""
    task = tf_config.get("task") or {}
    if not task:
        return "train"
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


def lock_model_dir(model_dir, task):
    """Takes `model_dir`/.lock-`task` for the rest of this process's life.

    Raises:
      PipelineError: another process holds it; the message names its pid, host and start time.
    """
    if not is_local_path(model_dir):
        return  # flock needs a local (or lock-aware network) file system
    path = os.path.join(model_dir, LOCK_PREFIX + task)
    if path in _HELD_LOCKS:
        return
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not yet written its name"
        handle.close()
        raise PipelineError(
            f"--model_dir={model_dir} is in use by another training ({task}: {holder}): wait for it "
            "to finish or stop it, or give another --model_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    handle.flush()
    _HELD_LOCKS[path] = handle


def io_error_message(error, where):
    """A one-line description of an out-of-space error (OSError or tf.errors.OpError), else None."""
    if isinstance(error, OSError) and error.errno in _SPACE_ERRORS:
        reason = _SPACE_ERRORS[error.errno]
    else:
        message = getattr(error, "message", None) or str(error)
        reason = next((reason for text, reason in _SPACE_MESSAGES.items() if text in message), None)
        if reason is None:
            return None
    return f"{reason} while writing to {where}: free space (or raise the limit) and re-run"



def remove_save_leftovers(model_dir):
    """Removes the unfinished checkpoint files a killed save left in local `model_dir`; returns their
    names. Only the process that holds `model_dir`'s lock for all saves may call it (a save of a
    running process looks the same)."""
    if not is_local_path(model_dir) or not os.path.isdir(model_dir):
        return []
    removed = sorted(name for name in os.listdir(model_dir) if _CHECKPOINT_TEMPORARY.match(name))
    for name in removed:
        path = os.path.join(model_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed
