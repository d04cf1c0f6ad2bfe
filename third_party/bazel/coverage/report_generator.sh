#!/usr/bin/env bash
echo "error: bazel coverage is not supported offline (no coverage report generator is installed); use bazel test" >&2
exit 1
