"""official/utils/provenance: the git state of a checkout (or why there is none), and the JSON-lines
file that keeps every record ever appended."""

import json
import os
import subprocess
import sys

import pytest

from official.utils import provenance
from official.utils.errors import PipelineError


def _git(directory, *arguments):
    subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t",
                    *arguments], check=True, capture_output=True, timeout=30)


def test_git_state_is_the_commit_and_whether_the_tree_differs_from_it(tmp_path):
    assert provenance.git_state(str(tmp_path)) == {
        "commit": None, "reason": f"{tmp_path} is not a git checkout"}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert provenance.git_state(str(tmp_path)) == {"commit": head, "dirty": False}
    (tmp_path / "new_module.py").write_text("")  # untracked code runs too
    assert provenance.git_state(str(tmp_path)) == {"commit": head, "dirty": True}


def test_records_are_appended_never_rewritten(tmp_path):
    path = tmp_path / provenance.RECORD_NAME
    path.write_text('{"event": "start"}')  # a last line without its newline, as an editor leaves it
    provenance.append_record(str(tmp_path), {"event": "resume", "flags": {"seed": 3}})
    provenance.append_record(str(tmp_path), {"event": "resume", "start_step": 9})
    assert provenance.read_records(str(path)) == [
        {"event": "start"}, {"event": "resume", "flags": {"seed": 3}},
        {"event": "resume", "start_step": 9}]
    assert [json.loads(line) for line in path.read_text().splitlines()][0] == {"event": "start"}
    assert os.listdir(tmp_path) == [provenance.RECORD_NAME]  # no temporary file left
    assert provenance.read_records(str(tmp_path / "missing.jsonl")) == []


def test_a_damaged_line_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / provenance.RECORD_NAME
    path.write_text('{"event": "start"}\n[1, 2\n')
    with pytest.raises(PipelineError, match=r"provenance.jsonl, line 2, is not a JSON record"):
        provenance.read_records(str(path))


def test_the_environment_names_this_interpreter_and_tensorflow_build():
    record = provenance.environment("start")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    assert record["versions"]["tensorflow"] == tf.__version__
    assert record["versions"]["cuda"] == tf.sysconfig.get_build_info().get("cuda_version")
    assert record["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"type": "CPU", "name": "/physical_device:CPU:0"} in record["devices"]
    line = provenance.describe_environment(record)
    assert f"TensorFlow {tf.__version__}" in line and "\n" not in line


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
