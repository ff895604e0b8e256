# Sourced by the launch scripts: creates .venv (when missing) and installs jaxvision into it.
# Usage: EXTRAS=test source launch/_venv.sh   (EXTRAS: the pyproject extras to install, if any)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[jaxvision] creating $ROOT/.venv" >&2
  "$PYTHON" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
SPEC="$ROOT"
if [ -n "${EXTRAS:-}" ]; then SPEC="$ROOT[$EXTRAS]"; fi
# Re-running is cheap: pip only checks what is already there.
"$ROOT/.venv/bin/python" -m pip install -q -e "$SPEC"
export PATH="$ROOT/.venv/bin:$PATH"
export JAXVISION_COMPILATION_CACHE="${JAXVISION_COMPILATION_CACHE:-$ROOT/.jax_cache}"
