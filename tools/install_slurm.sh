#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge with apt-get when slurmctld, slurmd, srun or munged is
# missing, for the tests that run a one-node Slurm cluster on this machine (tests/slurm_cluster.py).
# Exit status: 0 installed (or already there); 2 apt-get is unavailable (the tests then skip, saying
# so); 1 apt-get failed (its last messages are printed).
set -euo pipefail

missing=()
for tool in slurmctld slurmd srun sbatch munged; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
done
(( ${#missing[@]} )) || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get is unavailable to install Debian's slurm-wlm and munge (missing: ${missing[*]})" >&2
    exit 2
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "error: ${missing[*]} not installed; install them with \`sudo apt-get install slurm-wlm munge\` and rerun" >&2
    exit 1
fi
echo "Installing Debian's slurm-wlm and munge with apt-get (missing: ${missing[*]}) ..." >&2
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            slurm-wlm munge; } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    echo "error: apt-get could not install slurm-wlm and munge (its messages are above)" >&2
    exit 1
fi
