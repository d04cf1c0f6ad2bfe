"""run_imagenet.sh: the no-argument demo end to end, and its failure paths."""

import json
import os
import re
import subprocess
import sys

import pytest

from data_prep import demo_dataset
from tests import established_builder
from tests import record_fixtures
from tests import report_tables

# The script in the source tree (not a runfiles symlink), so that it finds the project's .venv.
SCRIPT = os.path.realpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "run_imagenet.sh"))


def _run(env_updates, *args, timeout=120):
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATA_DIR", "MODEL_DIR", "RAW_DIR", "NUM_GPUS", "WORKER_HOSTS",
                          "TASK_INDEX", "TASK_TYPE", "TF_CONFIG", "DEMO_DIR", "SHARD_FLAGS")
           and not key.startswith("SLURM_")}
    env.update(env_updates)
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_demo_runs_end_to_end_and_learns(tmp_path):
    result = _run({"DEMO_DIR": str(tmp_path)}, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = re.search(r"SavedModel evaluation: top_1_accuracy=([\d.]+) top_5_accuracy=([\d.]+) "
                        r"examples=100 ", result.stdout)
    assert figures, result.stdout[-3000:]
    assert float(figures.group(1)) >= 0.5  # five classes: chance is 0.2
    assert "ILSVRC2012_val_00000001.JPEG\n" in result.stdout  # classified through serving_default
    export = re.search(r"SavedModel:\s+(\S+)", result.stdout).group(1)
    assert os.path.isfile(os.path.join(export, "saved_model.pb"))
    assert os.path.isfile(tmp_path / "shards" / "build_summary.json")
    # The demo ends with its report: an evaluation every 1.5 of its 6 epochs, and the curves.
    paths = re.search(r"report:\s+(\S+) \(curves: (\S+)\)", result.stdout)
    assert paths, result.stdout[-3000:]
    assert os.path.isfile(paths.group(1)), result.stderr[-3000:]
    with open(paths.group(1)) as handle:
        rows = report_tables.evaluation_rows(handle.read())
    assert [float(row["epoch"]) for row in rows] == [1.6, 3.2, 4.8, 6.08]  # 9.375 steps each
    report_tables.assert_picture(paths.group(2))


@pytest.mark.parametrize("env, message", [
    ({"DATA_DIR": "/nonexistent/shards", "MODEL_DIR": "{tmp}/model"},
     "error: DATA_DIR=/nonexistent/shards does not exist"),
    ({"DATA_DIR": "{tmp}", "MODEL_DIR": "{tmp}/model"},
     "has no train-*-of-* and validation-*-of-* shards; set RAW_DIR"),
    ({"DATA_DIR": "{tmp}"}, "error: set MODEL_DIR"),
    ({"MODEL_DIR": "{tmp}/model"}, "error: MODEL_DIR/RAW_DIR are set but DATA_DIR is not"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "NUM_GPUS": "2"},
     "error: NUM_GPUS=2 requested but nvidia-smi -L lists 0 GPU(s)"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "WORKER_HOSTS": "a:1,b:1"},
     "error: WORKER_HOSTS is set: set TASK_INDEX"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "TASK_TYPE": "trainer"},
     "error: TASK_TYPE=trainer must be worker or evaluator"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "TASK_TYPE": "evaluator"},
     "error: TASK_TYPE=evaluator needs WORKER_HOSTS"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "WORKER_HOSTS": "a:1 b:1",
      "TASK_INDEX": "0"}, "error: --worker_hosts entry 1 'a:1 b:1' contains whitespace"),
    ({"DATA_DIR": "{shards}", "MODEL_DIR": "{tmp}/model", "TF_CONFIG": '{{"cluster": {{}}}}'},
     "error: TF_CONFIG has no task"),
])
def test_failure_paths_print_one_clear_line(tmp_path, env, message):
    if "NUM_GPUS" in env and os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has GPUs")
    shards = tmp_path / "shards"
    record_fixtures.write_labelled_split(str(shards), "train", [1, 2], num_shards=1)
    record_fixtures.write_labelled_split(str(shards), "validation", [1], num_shards=1)
    env = {key: value.format(tmp=tmp_path, shards=shards) for key, value in env.items()}
    result = _run(env)
    assert result.returncode == 1
    # imagenet_main's own errors come through the log's tee, on stdout.
    last_lines = [output.strip().splitlines()[-1] for output in (result.stderr, result.stdout)
                  if output.strip()]
    assert any(message in line for line in last_lines), last_lines
    assert "Traceback" not in result.stderr


INJECTED = "a[$(touch {tmp}/ran)0]"


@pytest.mark.parametrize("name, value, message", [
    ("SLURM_STEP_NUM_TASKS", INJECTED, "is not a number of tasks"),
    ("SLURM_STEP_NUM_TASKS", "abc", "is not a number of tasks"),
    ("SLURM_PROCID", INJECTED, "is not a task rank"),
    ("TASK_INDEX", INJECTED, "is not a task index"),
    ("NUM_GPUS", INJECTED, "is not a number of GPUs"),
    ("NUM_GPUS", "-2", "is not a number of GPUs"),
    ("NUM_GPUS", "1e3", "is not a number of GPUs"),
])
def test_environment_values_are_data_never_evaluated(tmp_path, name, value, message):
    shards = tmp_path / "shards"
    record_fixtures.write_labelled_split(str(shards), "train", [1], num_shards=1)
    record_fixtures.write_labelled_split(str(shards), "validation", [1], num_shards=1)
    value = value.format(tmp=tmp_path)
    env = {"DATA_DIR": str(shards), "MODEL_DIR": str(tmp_path / "model"), name: value}
    if name == "SLURM_PROCID":
        env["SLURM_STEP_NUM_TASKS"] = "2"
    result = _run(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}={value} {message} (digits"), lines
    assert not (tmp_path / "ran").exists()  # the command substitution never ran
    assert not (tmp_path / "model").exists()  # nothing was started


def test_a_model_dir_that_is_a_file_is_one_line(tmp_path):
    shards = tmp_path / "shards"
    record_fixtures.write_labelled_split(str(shards), "train", [1], num_shards=1)
    record_fixtures.write_labelled_split(str(shards), "validation", [1], num_shards=1)
    (tmp_path / "model").write_text("not a folder")
    result = _run({"DATA_DIR": str(shards), "MODEL_DIR": str(tmp_path / "model"), "NUM_GPUS": "0"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: MODEL_DIR={tmp_path}/model exists and is not a directory: point MODEL_DIR at a "
        "directory (checkpoints, logs and exports go there)")
    assert (tmp_path / "model").read_text() == "not a folder"


@pytest.mark.parametrize("validation_layout", ["flat", "class_folders"])
def test_raw_dir_takes_both_validation_layouts(tmp_path, validation_layout):
    raw = tmp_path / "raw"
    demo_dataset.make_demo_dataset(str(raw), num_classes=2, train_per_class=3, val_per_class=2,
                                   image_size=48)
    if validation_layout == "class_folders":
        # As the established preprocessing script leaves it; val_labels.txt stays beside it.
        established_builder.preprocess_validation(str(raw / "val"), str(raw / "val_labels.txt"))
    shards = tmp_path / "shards"
    # --image_size=10 stops imagenet_main with its own one-line error once the shards are built.
    result = _run({"RAW_DIR": str(raw), "DATA_DIR": str(shards), "MODEL_DIR": str(tmp_path / "model"),
                   "SHARD_FLAGS": "--train_shards=2 --validation_shards=1"}, "--image_size=10",
                  timeout=300)
    assert result.returncode == 1
    # imagenet_main's output goes through tee to stdout.
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "image_size" in last_line, \
        result.stdout[-3000:] + result.stderr[-3000:]
    with open(shards / "build_summary.json") as handle:
        summary = json.load(handle)
    assert summary["status"] == "complete"
    assert summary["splits"]["validation"]["images_written"] == 4
    assert summary["splits"]["validation"]["classes"].keys() == summary["splits"]["train"][
        "classes"].keys()
    note = "val_labels.txt is not used"
    assert (note in result.stderr) == (validation_layout == "class_folders")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
