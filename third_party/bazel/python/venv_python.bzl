"""A Python toolchain whose interpreter is this clone's virtualenv (.venv/bin/python).

The virtualenv's absolute path differs per clone, so it is found when Bazel fetches the repository, not
written into the tree. The interpreter runs under its virtualenv path (not the resolved system Python)
so that it sees the pinned packages in .venv.
"""

_BUILD_TEMPLATE = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "python3",
    interpreter_path = "{python}",
    python_version = "PY3",
    # The second line ties every test's cached result to the pins the virtualenv was built from:
    # Bazel sees nothing of the interpreter at interpreter_path, so without it a changed
    # requirements.txt would leave old "(cached) PASSED" results standing.
    stub_shebang = "#!{python}\\n# requirements.txt hash {requirements_hash}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _venv_python_impl(repository_ctx):
    workspace_root = repository_ctx.path(Label("@//:WORKSPACE")).dirname
    python = workspace_root.get_child(".venv").get_child("bin").get_child("python")
    if not python.exists:
        fail("no virtualenv interpreter at %s: create it with `source tools/venv.sh` (or run ./run_tests.sh), then rerun bazel" % python)
    repository_ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % repository_ctx.name)
    requirements_hash = hash(repository_ctx.read(Label("@//:requirements.txt")))
    repository_ctx.file("BUILD", _BUILD_TEMPLATE.format(python = python, requirements_hash = requirements_hash))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    # Re-evaluated on every fetch: cheap, and it notices a clone that moved or a venv created later.
    local = True,
)
