#!/usr/bin/env bash
# The main job: installs what it needs, trains the default experiment on the procedural scenes,
# prints the final metrics and saves plots in the workdir (default: runs/default).
# Extra arguments go to `python -m jaxvision train` (e.g. --config.train.steps=100).
source "$(dirname "$0")/_venv.sh"
WORKDIR="${WORKDIR:-$ROOT/runs/default}"
cd "$ROOT"
python -m jaxvision train --config experiments/classification.py:default --workdir "$WORKDIR" "$@"
echo "[jaxvision] plots: $WORKDIR/curves.png $WORKDIR/confusion_matrix.png" >&2
