#!/usr/bin/env bash
# Installs Debian packages with apt-get for the tools that need them (tools/bazel_test.sh,
# tools/install_slurm.sh):  tools/apt_install.sh PACKAGE...
# Exit status: 0 installed; 2 apt-get is unavailable (the caller skips, saying so); 1 not root, or
# apt-get failed (its last messages are printed).
set -euo pipefail

if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get is unavailable to install Debian's $*" >&2
    exit 2
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "error: install Debian's $* with \`sudo apt-get install $*\` and rerun" >&2
    exit 1
fi
echo "Installing Debian's $* with apt-get ..." >&2
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    echo "error: apt-get could not install $* (its messages are above)" >&2
    exit 1
fi
