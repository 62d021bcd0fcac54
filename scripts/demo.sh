#!/usr/bin/env bash
# The main job: install, then replay 2017 in the lab and print what the probe saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/wallwatch demo "$@"
