# Source me: environment for running av_td3_ros from the project venv without an apt ROS.
# shellcheck shell=bash
_av_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_av_venv=${AV_TD3_VENV:-$_av_repo/.venv}
export VIRTUAL_ENV="$_av_venv"
export PATH="$_av_venv/bin:$PATH"
# get_package_share_directory needs the venv prefix in the ament index path.
export AMENT_PREFIX_PATH="$_av_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# Large camera frames: with the default transports Fast DDS loses best-effort 2 MB frames
# (and LARGE_DATA lost most of them on these machines too); see docs/transport.md.
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_av_repo/config/fastdds_large_images.xml}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
unset _av_repo _av_venv
