#!/usr/bin/env bash
# Set up the venv (idempotent) and run the linter, the whole test suite, and a colcon build +
# `colcon test` of the launch/manifest tests in a temporary workspace (scripts/colcon_test.sh).
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
# MetaDrive's own venv, for the metadrive-marked tests (docs/metadrive.md).
bash scripts/setup.sh --metadrive
# shellcheck source=/dev/null
source scripts/env.sh
echo "[test] ruff check"
ruff check .
echo "[test] colcon build + colcon test"
bash scripts/colcon_test.sh
# The free space goes in the log: a suite that runs out of disk fails in confusing ways.
free=$(df -h "${TMPDIR:-/tmp}" 2>/dev/null | awk 'NR==2 {print $4}') || free=unknown
echo "[test] pytest (free disk for its temporary files: $free)"
python -m pytest -q -p no:cacheprovider "$@"
