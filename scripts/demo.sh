#!/usr/bin/env bash
# Set up the venv (idempotent) and run the main job without CARLA: the CarRacing stand-in
# simulator on the CARLA bridge topics + the driver node driving the shipped camera policy
# (models/camera_policy.safetensors), then print a summary with each episode's return.
# --world metadrive: MetaDrive (its venv set up too) + the driver with the shipped student
# (models/metadrive_camera_policy.safetensors); the summary gives each episode's outcome.
# Usage: scripts/demo.sh [--world metadrive] [--random] [--train] [--duration S]
#                        [--episodes N] [--checkpoint PATH] ...
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
previous=''
for arg in "$@"; do
  case "$previous $arg" in
    "--world metadrive" | *" --world=metadrive") bash scripts/setup.sh --metadrive ;;
  esac
  previous=$arg
done
# shellcheck source=/dev/null
source scripts/env.sh
export ROS_LOG_DIR=${ROS_LOG_DIR:-$repo/runs/ros_log}
exec python -m av_td3_ros.tools.demo "$@"
