#!/usr/bin/env bash
# The Bazel part of the test command, offline:
#   tools/bazel_test.sh          builds every target (//...) and runs the tests of //tests:bazel_smoke,
#                                which show that runfiles, sandbox and the .venv toolchain work (CI; the
#                                whole suite runs once, in pytest)
#   tools/bazel_test.sh --all    builds every target and runs every test target under Bazel
# Installs Debian's bazel-bootstrap (Bazel 4.2.3) with apt-get when bazel is missing, and skips, saying
# so, only where apt-get is unavailable. Fails when a target does not build, when a test fails, when no
# test targets exist, or when a module or test file under official/, data_prep/ or tests/ is in no
# target's srcs. Further arguments go to `bazel test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The Python toolchain (third_party/bazel/python) runs tests with this clone's .venv.
source tools/venv.sh

tests_to_run=//tests:bazel_smoke
if [[ "${1:-}" == "--all" ]]; then
    tests_to_run=//...
    shift
fi

if ! command -v bazel >/dev/null 2>&1; then
    installed=0
    tools/apt_install.sh bazel-bootstrap || installed=$?
    if (( installed == 2 )); then
        echo "skipping bazel test: bazel is not installed and apt-get is unavailable to install Debian's bazel-bootstrap (install Bazel 4.2.3 to run it)" >&2
        exit 0
    fi
    (( installed == 0 )) || exit 1
    if ! command -v bazel >/dev/null 2>&1; then
        echo "error: apt-get installed bazel-bootstrap but no \`bazel\` is on PATH ($PATH)" >&2
        exit 1
    fi
fi

# The server otherwise idles for hours after the last command.
trap 'bazel shutdown >/dev/null 2>&1 || true' EXIT

# A tool that only looks like Bazel (npm's bazel without its execute bit) prints nothing and exits 0;
# asking for the test targets first turns that into an error instead of a silent pass.
if ! test_targets="$(bazel query --noshow_progress 'tests(//...)')"; then
    echo "error: bazel could not read the BUILD files (its message is above)" >&2
    exit 1
fi
if [[ -z "$test_targets" ]]; then
    echo "error: bazel found no test targets under //... (is \`$(command -v bazel)\` a working Bazel?)" >&2
    exit 1
fi

source_labels="$(bazel query --noshow_progress 'labels(srcs, //...)')"
sources_in_targets="$(echo "$source_labels" | sed -n 's|^//\([^:]*\):\(.*\)$|\1/\2|p' | sort)"
untargeted="$(comm -23 <(find official data_prep tests -name '*.py' ! -name '__init__.py' | sort) \
    <(echo "$sources_in_targets"))"
if [[ -n "$untargeted" ]]; then
    echo "error: these files are in no Bazel target's srcs; add a py_library/py_binary/py_test for each to the BUILD file of its directory:" >&2
    echo "$untargeted" | sed 's/^/  /' >&2
    exit 1
fi

# Bazel runs a py_test file as a script: one without the pytest.main guard collects nothing and
# passes while testing nothing.
unguarded="$(grep -L '^if __name__ == "__main__":' tests/test_*.py || true)"
if [[ -n "$unguarded" ]]; then
    echo "error: these test files do not run pytest when executed (Bazel would pass them without running a test); end each with if __name__ == \"__main__\": sys.exit(pytest.main([__file__, ...])):" >&2
    echo "$unguarded" | sed 's/^/  /' >&2
    exit 1
fi

start=$SECONDS
if ! bazel build --keep_going //...; then
    echo "error: bazel build //... failed (its messages are above)" >&2
    exit 1
fi
echo "bazel build: every target of //... built in $((SECONDS - start)) s" >&2

if [[ "$tests_to_run" == //... ]]; then
    echo "bazel test: all $(echo "$test_targets" | wc -l) test targets" >&2
else
    echo "bazel test: $tests_to_run ($(bazel query --noshow_progress "tests($tests_to_run)" | wc -l)" \
        "of $(echo "$test_targets" | wc -l) test targets; tools/bazel_test.sh --all runs them all)" >&2
fi
start=$SECONDS
status=0
bazel test --keep_going "$@" "$tests_to_run" || status=$?
if [[ $status == 0 ]]; then
    echo "bazel test: all passed in $((SECONDS - start)) s" >&2
elif [[ $status == 3 ]]; then
    echo "error: bazel test: some tests failed (their logs are above)" >&2
elif [[ $status == 4 ]]; then
    echo "error: bazel test found no test targets to run in $tests_to_run" >&2
else
    echo "error: bazel test could not build or run the tests (exit code $status; see above)" >&2
fi
exit "$status"
