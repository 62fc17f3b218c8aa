#!/usr/bin/env bash
# Build av_td3_ros with colcon in a temporary workspace and run a subset of the tests through
# `colcon test`, so every run checks the ament install layout (share/, the package marker,
# console scripts under lib/av_td3_ros) that `ros2 launch` / `ros2 run` users get.
# Needs the venv from scripts/setup.sh (colcon comes from requirements-colcon.txt).
#
# Usage: scripts/colcon_test.sh [test files...]   (default: launch, manifest, rviz, CARLA files)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=/dev/null
source "$repo/scripts/env.sh"
if [ "$#" -gt 0 ]; then
  tests=("$@")
else
  tests=(test/test_launch_files.py test/test_launch_runner.py test/test_package_manifest.py
         test/test_rviz_config.py test/test_carla_config.py)
fi
ws=$(mktemp -d -t av_td3_colcon_XXXXXX)
trap 'rm -rf "$ws"' EXIT
log() { printf '[colcon] %s\n' "$*" >&2; }
# Only colcon's own environment may point at av_td3_ros's share/: drop the venv from
# AMENT_PREFIX_PATH (conftest adds it back after colcon's entries, for carla_msgs).
unset AMENT_PREFIX_PATH
common=(--build-base "$ws/build" --install-base "$ws/install")
log "colcon build (workspace $ws)"
colcon --log-base "$ws/log" build --paths "$repo" "${common[@]}" >"$ws/build.out" 2>&1 \
  || { cat "$ws/build.out" >&2; log "colcon build failed"; exit 1; }
test -f "$ws/install/av_td3_ros/share/ament_index/resource_index/packages/av_td3_ros"
test -x "$ws/install/av_td3_ros/lib/av_td3_ros/driver_node"
# The install space's own environment hooks must give the installed package and its share/
# (not this checkout's, nor the venv's copy from scripts/setup.sh).
(
  set +u  # colcon's setup scripts read unset variables
  # shellcheck source=/dev/null
  . "$ws/install/local_setup.sh"
  set -u
  cd /
  python -c 'import sys, av_td3_ros; assert av_td3_ros.__file__.startswith(sys.argv[1]), \
av_td3_ros.__file__' "$ws/install/"
  "$ws/install/av_td3_ros/lib/av_td3_ros/run_launch" driver.launch.xml checkpoint:=0123 --print \
    | grep -q "'checkpoint': '0123'"
) || { log "the colcon install space does not work on its own"; exit 1; }
log "colcon test: ${tests[*]}"
colcon --log-base "$ws/log" test --paths "$repo" "${common[@]}" \
  --test-result-base "$ws/test_results" --return-code-on-test-failure \
  --event-handlers console_direct+ --pytest-args "${tests[@]}"
log "colcon test-result"
# test-result exits non-zero on failures and errors; also refuse a run that ran nothing.
status=0
summary=$(colcon test-result --test-result-base "$ws/test_results" --verbose) || status=$?
echo "$summary"
[ "$status" = 0 ] || { log "colcon test-result: failures"; exit 1; }
count=$(sed -n 's/^Summary: \([0-9]*\) tests.*/\1/p' <<<"$summary")
[ "${count:-0}" -gt 0 ] || { log "colcon test ran no tests"; exit 1; }
# The build must not leave files in the source tree.
rm -rf "$repo/build" "$repo"/*.egg-info
