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
# Killed node processes can leave Fast DDS shared-memory segments behind; clean stale ones.
trap 'python - <<PY 2>/dev/null || true
import glob, os
for path in glob.glob("/dev/shm/fastdds_*"):
    try:
        os.remove(path) if os.path.getmtime(path) < __import__("time").time() - 600 else None
    except OSError:
        pass
PY' EXIT
python -m pytest -q -p no:cacheprovider "$@"
