#!/usr/bin/env bash
# Set up the venv (idempotent) and run the main job without CARLA: the CarRacing stand-in
# simulator on the CARLA bridge topics + the driver node driving the shipped camera policy
# (models/camera_policy.safetensors), then print a summary with each episode's return.
# Usage: scripts/demo.sh [--random] [--train] [--duration S] [--checkpoint PATH] ...
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
export ROS_LOG_DIR=${ROS_LOG_DIR:-$repo/runs/ros_log}
exec python -m av_td3_ros.tools.demo "$@"
