#!/usr/bin/env bash
# Local launcher: one process, all local devices. Same arguments as `python -m jaxvision train`:
#   launch/local.sh --config experiments/classification.py:default --workdir runs/x [--config.K=V ...]
# Set DEVICES=N to simulate N CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N).
source "$(dirname "$0")/_venv.sh"
if [ -n "${DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES"
fi
cd "$ROOT"
exec python -m jaxvision train "$@"
