#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge with apt-get when slurmctld, slurmd, srun, sbatch or munged
# is missing, for the tests that run a one-node Slurm cluster on this machine (tests/slurm_cluster.py).
# Exit status: 0 installed (or already there); 2 apt-get is unavailable (the tests then skip, saying
# so); 1 apt-get failed (its last messages are printed).
set -euo pipefail

missing=()
for tool in slurmctld slurmd srun sbatch munged; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
done
(( ${#missing[@]} )) || exit 0
echo "missing: ${missing[*]}" >&2
exec "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" slurm-wlm munge
