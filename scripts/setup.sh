#!/usr/bin/env bash
# Create (or refresh) the project venv: ROS 2 Kilted wheels, torch (CPU wheel), the fallback
# carla_msgs interface package when carla_msgs is not importable, and av_td3_ros itself.
# Idempotent: a second run only reinstalls av_td3_ros (a few seconds).
#
# Usage: scripts/setup.sh [--bench]     (--bench adds Stable-Baselines3 for bench/)
#        scripts/setup.sh --metadrive   (only MetaDrive's own venv, docs/metadrive.md)
# Env:   AV_TD3_VENV (default: <repo>/.venv), PYTHON (default: python3),
#        AV_TD3_METADRIVE_VENV (default: <repo>/.venv-metadrive)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# MetaDrive 0.3.0.1 pins numpy 1.24 and gym 0.25, so it gets a venv of its own; the worker
# (av_td3_ros/sim/metadrive_worker.py) runs there by file path. The simplepbr and gltf pins
# are the last versions MetaDrive 0.3.0.1 can import.
if [ "${1:-}" = "--metadrive" ]; then
  mvenv=${AV_TD3_METADRIVE_VENV:-$repo/.venv-metadrive}
  mreqs="metadrive-simulator==0.3.0.1 panda3d-simplepbr==0.10 panda3d-gltf==0.13"
  if [ ! -x "$mvenv/bin/python" ]; then
    printf '[setup] creating MetaDrive venv at %s\n' "$mvenv" >&2
    "${PYTHON:-python3}" -m venv "$mvenv"
  fi
  mstamp="$mvenv/.av_td3_metadrive.sha"
  mwant=$(echo "$mreqs" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$mstamp" 2>/dev/null)" != "$mwant" ]; then
    printf '[setup] installing %s (first run: ~1 minute)\n' "$mreqs" >&2
    # shellcheck disable=SC2086
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$mvenv/bin/python" -m pip install -q $mreqs \
      2> >(grep -v "is ignored: it is neither" >&2)
    "$mvenv/bin/python" -c "import metadrive" >/dev/null 2>&1 \
      || { printf '[setup] metadrive not importable in %s\n' "$mvenv" >&2; exit 1; }
    echo "$mwant" > "$mstamp"
  fi
  printf '[setup] MetaDrive venv ready: %s\n' "$mvenv" >&2
  exit 0
fi
venv=${AV_TD3_VENV:-$repo/.venv}
python=${PYTHON:-python3}
want_bench=0
[ "${1:-}" = "--bench" ] && want_bench=1

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv"
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Stamp = hash of everything that decides the installed set; skip pip when unchanged.
stamp="$venv/.av_td3_requirements.sha"
want=$(cat "$repo/requirements.txt" "$repo/requirements-colcon.txt" "$repo"/carla_msgs_fallback/carla_msgs/msg/*.msg \
  "$repo/carla_msgs_fallback/carla_msgs/CMakeLists.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing requirements (first run: ~2 minutes)"
  "$vpy" -m pip install -q -r "$repo/requirements.txt" -r "$repo/requirements-colcon.txt" 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f "$venv/.carla_msgs_built"
  echo "$want" > "$stamp"
fi
if [ "$want_bench" = 1 ]; then
  "$vpy" -m pip install -q -r "$repo/requirements-bench.txt" 2> >(grep -v "is ignored" >&2)
fi

# carla_msgs: use the user's (e.g. a sourced ros-bridge workspace) when importable.
if "$vpy" -c "import carla_msgs.msg" 2>/dev/null; then
  log "carla_msgs importable: not building the fallback"
elif [ ! -f "$venv/.carla_msgs_built" ] || ! "$vpy" -c "import carla_msgs.msg" 2>/dev/null; then
  log "building fallback carla_msgs into $venv (~30 s)"
  py_include=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  np_include=$("$vpy" -c "import numpy; print(numpy.get_include())")
  # The wheels' exported cmake files name the wheel build container's paths: point them here.
  for f in "$venv"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do
    sed -i -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$py_include#g" \
      -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$np_include#g" \
      "$f"
  done
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  (
    export AMENT_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
    cmake -S "$repo/carla_msgs_fallback/carla_msgs" -B "$build" -DCMAKE_PREFIX_PATH="$venv" \
      -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$vpy" -DBUILD_TESTING=OFF >"$build/log" 2>&1 \
      && cmake --build "$build" -j2 >>"$build/log" 2>&1 && cmake --install "$build" >>"$build/log" 2>&1
  ) || { tail -40 "$build/log" >&2; log "carla_msgs build failed"; exit 1; }
  "$vpy" -c "import carla_msgs.msg" || { log "carla_msgs built but not importable"; exit 1; }
  touch "$venv/.carla_msgs_built"
fi

# av_td3_ros itself: a regular (non-editable) install so share/av_td3_ros holds launch/ and config/.
log "installing av_td3_ros into the venv"
"$vpy" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$repo" \
  2> >(grep -v "is ignored: it is neither" >&2)
rm -rf "$repo/build" "$repo"/*.egg-info
log "ready: source $repo/scripts/env.sh (or use $vpy)"
