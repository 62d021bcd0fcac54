#!/usr/bin/env bash
# The test suite: install, then run every test, lab tests included (they need root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The fuzz profile of tests/fuzzing.py: every parser property test at >= 1,000 examples
# (~20 s of CPU more than their own counts). Targeted `pytest` runs keep their own counts.
export WALLWATCH_HYPOTHESIS_PROFILE="${WALLWATCH_HYPOTHESIS_PROFILE:-fuzz}"
exec .venv/bin/python -m pytest "$@"
