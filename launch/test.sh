#!/usr/bin/env bash
# The test suite: installs jaxvision with its test extra into .venv, then runs pytest.
# Extra arguments go to pytest (e.g. -k loader).
EXTRAS=test source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
python -m pytest -q --durations=30 "$@"
