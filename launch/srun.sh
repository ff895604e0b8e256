#!/usr/bin/env bash
# One task of a SLURM job step; srun starts it on every node (launch/slurm.sbatch does that):
#   srun --kill-on-bad-exit=1 --label launch/srun.sh [train|eval|bench] --config ... --workdir /shared/x
#
# JAX reads the job from SLURM's variables: the coordinator is the step's first node (port from
# the job id, or JAX_COORDINATOR_PORT), process id = SLURM_PROCID, process count = SLURM_NTASKS.
# With one task per node (the default of slurm.sbatch) this task uses every GPU of its node;
# with one task per GPU (--ntasks-per-node=<GPUs per node>) JAX gives the task whose
# SLURM_LOCALID is i the GPU i. JAXVISION_LOCAL_DEVICE_IDS overrides either choice.
# The workdir must be on a filesystem every node sees (all processes write the checkpoints).
# Python: $JAXVISION_PYTHON, else the repository's .venv (created beforehand, with jax[cuda12]).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${JAXVISION_PYTHON:-$ROOT/.venv/bin/python}"
if [ -z "${SLURM_PROCID:-}" ]; then
  echo "launch/srun.sh: SLURM_PROCID is not set; start it with srun (see launch/README.md)" >&2
  exit 2
fi
if [ ! -x "$PY" ]; then
  echo "launch/srun.sh: no python at $PY; create $ROOT/.venv (pip install -e . 'jax[cuda12]') or set JAXVISION_PYTHON" >&2
  exit 2
fi

COMMAND=train
case "${1:-}" in
  train|eval|bench) COMMAND=$1; shift ;;
esac

export JAXVISION_DISTRIBUTED="${JAXVISION_DISTRIBUTED:-slurm}"
tasks="${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-1}}"
nodes="${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-1}}"
if [ -z "${JAXVISION_LOCAL_DEVICE_IDS:-}" ] && [ "$tasks" = "$nodes" ]; then
  # One task per node: JAX's SLURM default would give it a single GPU (SLURM_LOCALID), so
  # list every GPU the node has.
  gpus="${SLURM_GPUS_ON_NODE:-}"
  if [ -z "$gpus" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus="$(nvidia-smi -L | grep -c '^GPU' || true)"
  fi
  if [ -n "$gpus" ] && [ "$gpus" -gt 0 ]; then
    JAXVISION_LOCAL_DEVICE_IDS="$(seq -s, 0 $((gpus - 1)))"
    export JAXVISION_LOCAL_DEVICE_IDS
  fi
fi

cd "$ROOT"
if [ "$COMMAND" = train ]; then
  set -- --no-progress "$@"  # a progress bar per task would only clutter the job log
fi
exec "$PY" -m jaxvision "$COMMAND" "$@"
