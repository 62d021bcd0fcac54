#!/usr/bin/env bash
# The test suite: install, then run every test, lab tests included (they need root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
