"""The layout holds (tools/check_layout.py on this tree), and the check finds each kind of breach."""

import os
import sys

import pytest

from tools import check_layout

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

_LIBRARY = 'py_library(name = "{name}", srcs = ["{name}.py"], deps = [{deps}])\n'


def _write(root, path, text=""):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as handle:
        handle.write(text)


def _tree(root, files, builds):
    """A small tree with the project's packages: {path: source}, {package: BUILD text}."""
    for package in ("official", "official/utils", "official/xception", "data_prep", "tests"):
        _write(root, os.path.join(package, "__init__.py"))
    for path, source in files.items():
        _write(root, path, source)
    for package, text in builds.items():
        _write(root, os.path.join(package, "BUILD"), text)


def _clean_tree(root):
    _tree(root, {
        "official/utils/errors.py": "",
        "official/xception/model.py": "from official.utils import errors\n",
        "data_prep/builder.py": "from official.utils.errors import PipelineError\n",
        "tests/test_model.py": "from official.xception import model\n",
    }, {
        "official/utils": _LIBRARY.format(name="errors", deps=""),
        "official/xception": _LIBRARY.format(name="model", deps='"//official/utils:errors"'),
        "data_prep": _LIBRARY.format(name="builder", deps='"//official/utils:errors"'),
        "tests": 'py_test(name = "test_model", srcs = ["test_model.py"], '
                 'deps = ["//official/xception:model"])\n',
    })


def test_this_tree_keeps_its_layout():
    assert check_layout.check(REPO_ROOT) == []


def test_a_clean_made_up_tree_passes(tmp_path):
    _clean_tree(str(tmp_path))
    assert check_layout.check(str(tmp_path)) == []


@pytest.mark.parametrize("path, source, expected", [
    ("official/utils/errors.py", "from official.xception import model\n",
     "official/utils/errors.py imports official.xception.model: official/utils/ may import only itself"),
    ("data_prep/builder.py", "def f():\n    from official.xception import model\n",
     "data_prep/builder.py imports official.xception.model: data_prep/ may import only official/utils"),
    ("official/xception/model.py", "import tests.test_model\n",
     "official/xception/model.py imports tests.test_model: official/xception/ may import only "
     "official/utils"),
])
def test_an_upward_or_sideways_import_is_named(tmp_path, path, source, expected):
    _clean_tree(str(tmp_path))
    _write(str(tmp_path), path, source)
    assert expected in check_layout.check(str(tmp_path))


def test_an_import_circle_is_named_even_through_a_function_level_import(tmp_path):
    _clean_tree(str(tmp_path))
    _write(str(tmp_path), "data_prep/plan.py", "from data_prep import builder\n")
    _write(str(tmp_path), "data_prep/builder.py", "def run():\n    from data_prep import plan\n")
    _write(str(tmp_path), "data_prep/BUILD", _LIBRARY.format(name="builder", deps='":plan"')
           + _LIBRARY.format(name="plan", deps='":builder"'))
    problems = check_layout.check(str(tmp_path))
    assert "import circle: data_prep.builder -> data_prep.plan -> data_prep.builder" in problems
    assert ("Bazel dependency circle: //data_prep:builder -> //data_prep:plan -> //data_prep:builder"
            in problems)


def test_bazel_targets_must_cover_every_module_and_name_their_deps(tmp_path):
    _clean_tree(str(tmp_path))
    _write(str(tmp_path), "official/utils/progress.py")
    _write(str(tmp_path), "official/xception/BUILD", _LIBRARY.format(name="model", deps=""))
    _write(str(tmp_path), "tests/test_other.py")
    problems = check_layout.check(str(tmp_path))
    assert any(p.startswith("official/utils/progress.py is in no Bazel target's srcs") for p in problems)
    assert ("//official/xception:model (official/xception/model.py) imports official.utils.errors but "
            "does not depend on //official/utils:errors") in problems
    assert any(p.startswith("tests/test_other.py is in no Bazel target's srcs") for p in problems)
    assert len(problems) == 3


def test_a_test_file_must_be_its_own_py_test(tmp_path):
    _clean_tree(str(tmp_path))
    _write(str(tmp_path), "tests/BUILD", 'py_library(name = "helpers", srcs = ["test_model.py"], '
                                         'deps = ["//official/xception:model"])\n')
    assert check_layout.check(str(tmp_path)) == [
        "tests/test_model.py must be the srcs of py_test test_model (it is in py_library //tests:helpers)"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
