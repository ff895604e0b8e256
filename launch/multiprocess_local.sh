#!/usr/bin/env bash
# Several JAX processes on this machine, talking over loopback: a multi-host job in miniature, on
# CPU. Each process gets its own CPU devices; together they train one model on one global batch.
#
#   launch/multiprocess_local.sh --num_processes N [--devices_per_process D] [--port P] \
#       --config experiments/classification.py:default --workdir runs/x [--config.K=V ...]
#   launch/multiprocess_local.sh --num_processes N -- python -m jaxvision eval --config ... --workdir ...
#
# Without `--` the processes run `python -m jaxvision train ARGS`; after `--` they run the command
# given. Output lines are prefixed with [pI]. If any process fails, the others are stopped
# (SIGTERM, then SIGKILL after JAXVISION_KILL_GRACE seconds, default 5) and the launcher exits
# with that process's status. SIGINT/SIGTERM to the launcher are forwarded to every process (a
# training run then saves a checkpoint at a step all processes agree on and stops); a second one,
# or JAXVISION_STOP_GRACE seconds (default 300) without them stopping, kills them.
# Set JAXVISION_PYTHON=/path/to/python to use an existing environment instead of .venv (no
# install step). JAXVISION_* timeouts (see jaxvision/distributed.py) pass through. Needs bash 5.1.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

NUM=""
DEVICES=1
PORT=""
ARGS=()
CMD=()
while [ $# -gt 0 ]; do
  case "$1" in
    --num_processes) NUM="${2:?--num_processes needs a value}"; shift 2 ;;
    --num_processes=*) NUM="${1#*=}"; shift ;;
    --devices_per_process) DEVICES="${2:?--devices_per_process needs a value}"; shift 2 ;;
    --devices_per_process=*) DEVICES="${1#*=}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

die() { echo "[launch] error: $*" >&2; exit 2; }
[[ "$NUM" =~ ^[1-9][0-9]*$ ]] || die "--num_processes N is required (a positive integer), got '${NUM}'"
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer, got '${DEVICES}'"
[ -z "$PORT" ] || [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '${PORT}'"
if (( BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1) )); then
  die "bash >= 5.1 is needed (wait -n -p), this is ${BASH_VERSION}"
fi

if [ -n "${JAXVISION_PYTHON:-}" ]; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  PY="$JAXVISION_PYTHON"
else
  # shellcheck source=launch/_venv.sh
  source "$(dirname "$0")/_venv.sh"
  PY=python
fi
cd "$ROOT"
if [ ${#CMD[@]} -eq 0 ]; then
  [ ${#ARGS[@]} -gt 0 ] || die "give the train arguments (--config ... --workdir ...) or a command after --"
  CMD=("$PY" -m jaxvision train "${ARGS[@]}")
elif [ ${#ARGS[@]} -gt 0 ]; then
  die "arguments before -- (${ARGS[*]}) are not launcher flags; put them after the command"
fi
if [ -z "$PORT" ]; then
  # A port free right now; the window until process 0 binds it is short.
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Line by line as they come (awk implementations may hold lines back in their input buffer).
prefix() { local line; while IFS= read -r line || [ -n "$line" ]; do printf '%s%s\n' "$1" "$line"; done; }

PIDS=()
for ((i = 0; i < NUM; i++)); do
  # setsid: each process leads its own process group, so stopping it also stops its data workers.
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}" \
  JAXVISION_COORDINATOR="127.0.0.1:${PORT}" \
  JAXVISION_NUM_PROCESSES="$NUM" \
  JAXVISION_PROCESS_ID="$i" \
  PYTHONUNBUFFERED=1 \
    setsid "${CMD[@]}" > >(prefix "[p$i] ") 2> >(prefix "[p$i] " >&2) &
  PIDS+=("$!")
done
echo "[launch] ${NUM} processes x ${DEVICES} CPU devices, coordinator 127.0.0.1:${PORT}, pids ${PIDS[*]}" >&2

declare -A LIVE=()
for ((i = 0; i < NUM; i++)); do LIVE[${PIDS[$i]}]=$i; done

signal_all() {  # signal_all SIG: sends SIG to the process group of every live process
  local pid
  for pid in "${!LIVE[@]}"; do kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid" 2>/dev/null || true; done
}

STATUS=0
KILL_AT=""  # set while stopping: past it, whatever still runs gets SIGKILL
INTERRUPTED=0
# shellcheck disable=SC2317  # invoked by the trap
on_signal() {
  INTERRUPTED=$((INTERRUPTED + 1))
  if [ "$INTERRUPTED" -eq 1 ]; then
    echo "[launch] forwarding SIGTERM to every process (again to kill them)" >&2
    signal_all TERM
    KILL_AT=$(( $(date +%s) + ${JAXVISION_STOP_GRACE:-300} ))
  else
    signal_all KILL
  fi
}
trap on_signal INT TERM

note_exit() {  # note_exit PID STATUS: bookkeeping when a process has ended
  local i=${LIVE[$1]}
  unset "LIVE[$1]"
  if [ "$2" -ne 0 ] && [ "$STATUS" -eq 0 ]; then
    STATUS=$2
    if [ ${#LIVE[@]} -gt 0 ]; then
      echo "[launch] process $i (pid $1) failed with status $2; stopping the other ${#LIVE[@]}" >&2
      signal_all TERM
      if [ -z "$KILL_AT" ]; then KILL_AT=$(( $(date +%s) + ${JAXVISION_KILL_GRACE:-5} )); fi
    else
      echo "[launch] process $i (pid $1) failed with status $2" >&2
    fi
  fi
}

while [ ${#LIVE[@]} -gt 0 ]; do
  if [ -n "$KILL_AT" ]; then
    # Stopping: poll, so that the deadline holds even if a process ignores SIGTERM (a JAX
    # process of a multi-process job whose peers are gone may wait for them).
    sleep 0.2
    for pid in "${!LIVE[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        rc=0
        wait "$pid" 2>/dev/null || rc=$?
        note_exit "$pid" "$rc"
      fi
    done
    if [ ${#LIVE[@]} -gt 0 ] && [ "$(date +%s)" -ge "$KILL_AT" ]; then
      echo "[launch] ${#LIVE[@]} process(es) still running at the deadline: SIGKILL" >&2
      signal_all KILL
      KILL_AT=$((KILL_AT + 3600))
    fi
    continue
  fi
  DONE=""
  rc=0
  wait -n -p DONE "${!LIVE[@]}" || rc=$?
  [ -n "${DONE:-}" ] || continue  # a trapped signal interrupted wait
  note_exit "$DONE" "$rc"
done
wait 2>/dev/null || true  # let the output prefixers drain
if [ "$STATUS" -eq 0 ]; then
  echo "[launch] all ${NUM} processes finished" >&2
fi
exit "$STATUS"
