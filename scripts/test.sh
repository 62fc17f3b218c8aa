#!/usr/bin/env bash
# Set up the venv (idempotent) and run the linter and the whole test suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
echo "[test] ruff check"
ruff check .
echo "[test] pytest"
python -m pytest -q -p no:cacheprovider "$@"
