#!/usr/bin/env bash
# Set up the venv (idempotent) and run the main job without CARLA: the CarRacing stand-in
# simulator on the CARLA bridge topics + the driver node, then print a summary.
# Usage: scripts/demo.sh [--train] [--duration S] [--checkpoint PATH] [--run-dir DIR] ...
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
export ROS_LOG_DIR=${ROS_LOG_DIR:-$repo/runs/ros_log}
exec python -m av_td3_ros.demo "$@"
