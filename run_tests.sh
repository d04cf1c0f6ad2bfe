#!/usr/bin/env bash
# The test command: sets up .venv from requirements.txt if needed, runs the
# whole pytest suite (PYTEST_WORKERS processes, 2 by default), then the same tests as Bazel targets.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k network -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source tools/venv.sh
# One test file per worker process (as Bazel runs them): each file's fixtures stay in one process.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
if (( $# == 0 )); then tools/bazel_test.sh; else echo "skipping bazel test: pytest was given a selection ($*); run tools/bazel_test.sh for it" >&2; fi
