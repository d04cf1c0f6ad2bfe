# Sourced by run_tests.sh and run_imagenet.sh: creates .venv with the pinned
# requirements when it is missing or stale, then activates it.
# PYTHON may name the interpreter; TensorFlow 2.15 runs on CPython 3.9 to 3.11.
# On a machine whose `nvidia-smi -L` lists a GPU the set is requirements-gpu.txt
# (requirements.txt plus TensorFlow's CUDA/cuDNN/NCCL wheels); CUDA_WHEELS=1 forces
# that set, CUDA_WHEELS=0 the CPU-only requirements.txt.

_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${_repo_root}/.venv"

case "${CUDA_WHEELS:-auto}" in
  1) _cuda_wheels=1 ;;
  0) _cuda_wheels=0 ;;
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
      _cuda_wheels=1
    else
      _cuda_wheels=0
    fi ;;
  *)
    echo "error: CUDA_WHEELS=${CUDA_WHEELS} must be 1 (install the CUDA wheels), 0 (do not) or auto" >&2
    exit 1 ;;
esac
if [[ "$_cuda_wheels" == 1 ]]; then
  _requirements="${_repo_root}/requirements-gpu.txt"
  # It includes requirements.txt: the stamp covers both files.
  _requirements_hash="$(cat "${_repo_root}/requirements.txt" "$_requirements" | sha256sum | cut -d' ' -f1)"
else
  _requirements="${_repo_root}/requirements.txt"
  _requirements_hash="$(sha256sum "$_requirements" | cut -d' ' -f1)"
fi

_python_ok() {
  "$1" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)' 2>/dev/null
}

_pick_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3.10 python3.9 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && _python_ok "$candidate"; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if [[ ! -x "${_venv}/bin/python" ]] || ! _python_ok "${_venv}/bin/python" \
    || [[ "$(cat "${_venv}/.requirements.sha256" 2>/dev/null)" != "$_requirements_hash" ]]; then
  if ! _python="$(_pick_python)"; then
    echo "error: TensorFlow 2.15 needs Python 3.9-3.11 (3.11 recommended); none found on PATH (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  echo "Setting up ${_venv} with $("$_python" --version 2>&1) and the pins in ${_requirements##*/} ..." >&2
  if [[ ! -x "${_venv}/bin/python" ]] || ! _python_ok "${_venv}/bin/python"; then
    rm -rf "$_venv"
    "$_python" -m venv "$_venv" || { echo "error: could not create a virtualenv at ${_venv} with ${_python}" >&2; exit 1; }
  fi
  "${_venv}/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_requirements" \
    || { echo "error: installing ${_requirements##*/} into ${_venv} failed (see pip's message above)" >&2; exit 1; }
  echo "$_requirements_hash" > "${_venv}/.requirements.sha256"
fi
# shellcheck disable=SC1091
source "${_venv}/bin/activate"
# TensorFlow's C++ INFO lines and cuDNN/TensorRT notices on CPU machines are noise.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
