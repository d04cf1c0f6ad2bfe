#!/usr/bin/env bash
# The test command: sets up .venv from requirements.txt if needed, runs the whole pytest suite
# (PYTEST_WORKERS processes, 2 by default), then the Bazel part: every target built and the few tests of
# //tests:bazel_smoke run under Bazel, so that each test runs once (tools/bazel_test.sh --all runs every
# test under Bazel too). Extra arguments go to pytest (e.g. ./run_tests.sh -k network -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source tools/venv.sh
# One test file per worker process (as Bazel runs them): each file's fixtures stay in one process.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
if (( $# == 0 )); then tools/bazel_test.sh; else echo "skipping bazel: pytest was given a selection ($*); run tools/bazel_test.sh for it" >&2; fi
