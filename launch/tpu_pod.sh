#!/usr/bin/env bash
# Train on a Cloud TPU VM or TPU pod slice from your machine: copies this repository to every
# worker, installs it there and starts the same command on all workers at once. JAX finds the
# other workers by itself (JAXVISION_DISTRIBUTED=cluster), so a v4-32 slice runs as 4 processes.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] [launcher flags] \
#       --config experiments/classification.py:default --workdir /mnt/shared/runs/x [--config.K=V ...]
#   launch/tpu_pod.sh --tpu NAME --zone ZONE -- eval --config ... --workdir /mnt/shared/runs/x
#
# Launcher flags:
#   --tpu NAME          the TPU VM / pod slice (as in `gcloud compute tpus tpu-vm list`); required
#   --zone ZONE         its zone, e.g. us-central2-b; required
#   --project PROJECT   the Google Cloud project (default: gcloud's configured project)
#   --remote_dir DIR    where the code goes on each worker, relative to the home (default: jaxvision)
#   --python PY         the workers' Python (>= 3.11) for the venv (default: python3)
#   --skip_copy         do not copy/install again (the code on the workers is current)
#   --dry_run           print the gcloud commands instead of running them
# Without `--` the workers run `python -m jaxvision train ARGS`; after `--`, `python -m jaxvision`
# with the arguments given. The workdir must be a directory every worker sees at the same path
# (NFS/Filestore, or a bucket mounted with gcsfuse): all workers write checkpoints, worker 0
# writes the logs. A TPU VM slice with one host works with a local workdir.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "[tpu] error: $*" >&2; exit 2; }

TPU=""
ZONE=""
PROJECT=""
REMOTE_DIR="jaxvision"
PYBIN="python3"
COPY=1
DRY=0
ARGS=()
SUB=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) TPU="${2:?--tpu needs a value}"; shift 2 ;;
    --tpu=*) TPU="${1#*=}"; shift ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --zone=*) ZONE="${1#*=}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --project=*) PROJECT="${1#*=}"; shift ;;
    --remote_dir) REMOTE_DIR="${2:?--remote_dir needs a value}"; shift 2 ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}"; shift ;;
    --python) PYBIN="${2:?--python needs a value}"; shift 2 ;;
    --python=*) PYBIN="${1#*=}"; shift ;;
    --skip_copy) COPY=0; shift ;;
    --dry_run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; SUB=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ -n "$TPU" ] || die "--tpu NAME is required (see gcloud compute tpus tpu-vm list)"
[ -n "$ZONE" ] || die "--zone ZONE is required"
[[ "$REMOTE_DIR" =~ ^[A-Za-z0-9._/-]+$ ]] || die "--remote_dir '$REMOTE_DIR': use letters, digits, . _ / - only"
if [ ${#SUB[@]} -eq 0 ]; then
  [ ${#ARGS[@]} -gt 0 ] || die "give the train arguments (--config ... --workdir ...) or a command after --"
  SUB=(train "${ARGS[@]}")
elif [ ${#ARGS[@]} -gt 0 ]; then
  die "arguments before -- (${ARGS[*]}) are not launcher flags; put them after the command"
fi
if [ "$DRY" -eq 0 ]; then
  command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GFLAGS=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then GFLAGS+=(--project="$PROJECT"); fi

run() {  # run CMD...: runs it, or prints it (shell-quoted) with --dry_run
  if [ "$DRY" -eq 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all_workers() {  # on_all_workers 'shell command': the same command on every worker, in parallel
  run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${GFLAGS[@]}" --command="$1"
}

if [ "$COPY" -eq 1 ]; then
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  # The working tree as it is (uncommitted changes included), without environments and outputs.
  tar -C "$ROOT" -czf "$TMP/jaxvision.tgz" --exclude=./.venv --exclude=./.git --exclude=./runs \
    --exclude=./workdirs --exclude=./.jax_cache --exclude='__pycache__' --exclude='*.egg-info' .
  echo "[tpu] copying the code to every worker of $TPU" >&2
  run gcloud compute tpus tpu-vm scp "$TMP/jaxvision.tgz" "$TPU:jaxvision.tgz" --worker=all "${GFLAGS[@]}"
  echo "[tpu] installing on every worker (jaxvision + jax[tpu] in ~/$REMOTE_DIR/.venv)" >&2
  on_all_workers "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jaxvision.tgz -C ~/$REMOTE_DIR \
&& cd ~/$REMOTE_DIR && { [ -x .venv/bin/python ] || $(printf '%q' "$PYBIN") -m venv .venv; } \
&& .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e . 'jax[tpu]'"
fi

printf -v QUOTED '%q ' "${SUB[@]}"
echo "[tpu] starting on every worker: python -m jaxvision ${QUOTED}" >&2
on_all_workers "cd ~/$REMOTE_DIR && JAXVISION_DISTRIBUTED=cluster PYTHONUNBUFFERED=1 \
.venv/bin/python -m jaxvision ${QUOTED}"
