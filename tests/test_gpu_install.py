"""The GPU install: requirements-gpu.txt pins exactly the wheels of the installed TensorFlow's
"and-cuda" extra, and tools/venv.sh installs that set where `nvidia-smi -L` lists a GPU (CUDA_WHEELS
forces either set). Nothing is downloaded: pip is replaced by a recorder."""

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins(path):
    """{name: version} of the name==version lines of a requirements file; other lines as a list."""
    pins, others = {}, []
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                others.append(line)
                continue
            requirement = Requirement(line)
            [specifier] = requirement.specifier
            assert specifier.operator == "==", line
            pins[requirement.name.lower()] = specifier.version
    return pins, others


def _and_cuda_requirements():
    """{name: version} that the installed tensorflow's metadata lists for its and-cuda extra."""
    pinned = {}
    for line in importlib.metadata.distribution("tensorflow").requires:
        requirement = Requirement(line)
        if requirement.marker and requirement.marker.evaluate({"extra": "and-cuda"}) \
                and not requirement.marker.evaluate({"extra": ""}):
            [specifier] = requirement.specifier
            assert specifier.operator == "==", line
            pinned[requirement.name.lower()] = specifier.version
    return pinned


def test_gpu_pins_are_exactly_tensorflows_and_cuda_extra():
    cpu_pins, _ = _pins(os.path.join(REPO, "requirements.txt"))
    gpu_pins, includes = _pins(os.path.join(REPO, "requirements-gpu.txt"))
    assert cpu_pins["tensorflow"] == importlib.metadata.version("tensorflow")
    assert includes == ["-r requirements.txt"]
    expected = _and_cuda_requirements()
    assert len(expected) == 12 and "nvidia-cudnn-cu12" in expected and "nvidia-nccl-cu12" in expected
    assert gpu_pins == expected
    assert not set(gpu_pins) & set(cpu_pins)


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the repository's install files with a virtualenv whose pip only records its
    arguments, and a bin directory for a fake nvidia-smi."""
    for name in ("requirements.txt", "requirements-gpu.txt", os.path.join("tools", "venv.sh")):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        shutil.copy(os.path.join(REPO, name), tmp_path / name)
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text("")
    python = venv_bin / "python"
    python.write_text(f"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m pip" ]]; then echo "${{@: -1}}" >> "{tmp_path}/pip_calls"; exit 0; fi
exec {sys.executable} "$@"
""")
    python.chmod(0o755)
    (tmp_path / "fake_bin").mkdir()
    return tmp_path


def _source_venv(repo, gpu_listed, cuda_wheels=None):
    fake_bin = repo / "fake_bin"
    smi = fake_bin / "nvidia-smi"
    if gpu_listed:
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    elif smi.exists():
        smi.unlink()
    environment = {key: value for key, value in os.environ.items() if key != "CUDA_WHEELS"}
    environment["PATH"] = f"{fake_bin}:/usr/bin:/bin"
    if cuda_wheels is not None:
        environment["CUDA_WHEELS"] = cuda_wheels
    (repo / "pip_calls").unlink(missing_ok=True)
    result = subprocess.run(["bash", "-c", f"source {repo}/tools/venv.sh && echo sourced"],
                            env=environment, capture_output=True, text=True, timeout=60)
    calls = (repo / "pip_calls").read_text().split() if (repo / "pip_calls").exists() else []
    return result, [os.path.basename(call) for call in calls]


def _stamp(repo):
    return (repo / ".venv" / ".requirements.sha256").read_text().strip()


def _sha256(*paths):
    return hashlib.sha256(b"".join(open(path, "rb").read() for path in paths)).hexdigest()


@pytest.mark.parametrize("gpu_listed, cuda_wheels, expected", [
    (True, None, "requirements-gpu.txt"),
    (False, None, "requirements.txt"),
    (True, "0", "requirements.txt"),
    (False, "1", "requirements-gpu.txt"),
])
def test_venv_installs_the_gpu_set_where_a_gpu_is_listed(fake_repo, gpu_listed, cuda_wheels,
                                                         expected):
    result, calls = _source_venv(fake_repo, gpu_listed, cuda_wheels)
    assert result.returncode == 0 and result.stdout.strip() == "sourced", result.stderr
    assert calls == [expected]
    cpu = fake_repo / "requirements.txt"
    # The CPU stamp is the one existing virtualenvs carry; the GPU one covers both files.
    assert _stamp(fake_repo) == (_sha256(cpu) if expected == "requirements.txt"
                                 else _sha256(cpu, fake_repo / "requirements-gpu.txt"))
    # Up to date: sourcing again installs nothing; the other set installs again.
    assert _source_venv(fake_repo, gpu_listed, cuda_wheels)[1] == []
    other = "0" if expected == "requirements-gpu.txt" else "1"
    assert _source_venv(fake_repo, gpu_listed, other)[1] != []


def test_a_bad_switch_is_a_one_line_error(fake_repo):
    result, calls = _source_venv(fake_repo, False, "yes")
    assert result.returncode == 1 and calls == []
    assert result.stderr.strip() == ("error: CUDA_WHEELS=yes must be 1 (install the CUDA wheels), "
                                     "0 (do not) or auto")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
