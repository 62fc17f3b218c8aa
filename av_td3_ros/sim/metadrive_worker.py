"""Run MetaDrive 0.3.0.1 in its own venv and serve it over this process's stdin and stdout.

Started by `metadrive_client.MetaDriveClient` as `<metadrive venv>/bin/python <this file>`:
the av_td3_ros package is not installed in that venv, so this module imports only the
standard library and numpy at module level, and metadrive inside functions (the main venv
imports every module of `sim/` without metadrive, test/test_layout.py).

Protocol, both directions: a 4-byte big-endian length, that many bytes of a UTF-8 JSON
object (the header), then `header['nbytes']` raw bytes (0 when absent). Requests:
`{"cmd": "reset", "seed": int}`, `{"cmd": "step", "steer": f, "throttle": f, "brake": f}`
(CARLA's conventions: steer > 0 turns right), `{"cmd": "close"}`. With the `expert` option
every state carries `expert`, the privileged expert's (steer, throttle, brake) for it
(`metadrive_expert.py`). Every reply is
`{"ok": true, ...state}` followed by the BGR image (height x width x 3 uint8), or
`{"ok": false, "error": text}`. Nothing is pickled.

The state is in a right-handed map frame (x east-like, y left of x, z up, yaw
counter-clockwise): MetaDrive's own 2D frame is Panda3D's with y negated
(`metadrive.utils.coordinates_shift`), so x = x_md, y = -y_md, yaw = -heading_md gives
Panda3D's right-handed world frame back - the same flip the CARLA bridge applies to
Unreal's left-handed frame.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys

import numpy as np

HEADER = struct.Struct('>I')
CAMERA_FORWARD, CAMERA_UP, CAMERA_FOV = 1.6, 1.5, 90.0
"""The CARLA front camera mount (m forward of the vehicle origin, m up, horizontal deg)."""
ROUTE_SPACING = 1.0
"""Metres between route points, as carla_waypoint_publisher spaces them."""


def read_message(stream):
    """Return (header dict, payload bytes) read from `stream`, or None at end of stream."""
    raw = stream.read(HEADER.size)
    if len(raw) < HEADER.size:
        return None
    (length,) = HEADER.unpack(raw)
    header = json.loads(stream.read(length).decode('utf-8'))
    nbytes = int(header.get('nbytes', 0))
    payload = stream.read(nbytes) if nbytes else b''
    if len(payload) != nbytes:
        return None
    return header, payload


def write_message(stream, header: dict, payload: bytes = b''):
    """Write one message (`header` gets `nbytes`) and flush."""
    header = dict(header, nbytes=len(payload))
    data = json.dumps(header).encode('utf-8')
    stream.write(HEADER.pack(len(data)) + data + payload)
    stream.flush()


def metadrive_action(steer: float, throttle: float, brake: float) -> list[float]:
    """Return MetaDrive's [steering, throttle_brake] for a CARLA command.

    MetaDrive steers left for positive values, CARLA right; its one pedal axis is the
    throttle, or minus the brake when braking.
    """
    pedal = -brake if brake > 0.0 else throttle
    return [float(-steer), float(pedal)]


def _prepare_panda3d(run_dir: str):
    """Point caches at the run dir and make Panda3D render single-threaded on llvmpipe."""
    cache = os.path.join(run_dir, 'cache')
    os.makedirs(cache, exist_ok=True)
    os.environ.setdefault('XDG_CACHE_HOME', cache)
    os.environ.setdefault('MESA_SHADER_CACHE_DIR', os.path.join(cache, 'mesa'))
    from panda3d.core import loadPrcFileData
    loadPrcFileData('', 'audio-library-name null')
    loadPrcFileData('', f'model-cache-dir {os.path.join(cache, "panda3d")}')
    # MetaDrive 0.3.0.1 asks for 16 MSAA samples; llvmpipe allows 4, and even 4 is 8-60
    # times slower than none.
    from metadrive.engine.core import our_pbr
    init = our_pbr.OurPipeline.__init__
    if not getattr(init, 'no_msaa', False):
        def no_msaa_init(self, *args, **kwargs):
            kwargs['msaa_samples'] = 0
            init(self, *args, **kwargs)
        no_msaa_init.no_msaa = True
        our_pbr.OurPipeline.__init__ = no_msaa_init


class World:
    """One MetaDrive env with a front RGB camera; see the module docstring."""

    def __init__(self, options: dict):
        """Build the env from `options` (see `MetaDriveClient`'s config for the keys)."""
        _prepare_panda3d(options['run_dir'])
        from metadrive import MetaDriveEnv
        self.width, self.height = int(options['width']), int(options['height'])
        self.max_steps = int(options['max_episode_steps'])
        self.dt = 0.1
        block = options['map']
        self.env = MetaDriveEnv(dict(
            use_render=False, image_observation=True,
            multi_thread_render=False, show_terrain=False,
            show_skybox=bool(options.get('sky', False)), show_interface=False,
            show_logo=False, show_fps=False,
            traffic_density=float(options['traffic_density']),
            map=int(block) if str(block).isdigit() else str(block),
            start_seed=int(options['start_seed']), environment_num=int(options['scenarios']),
            physics_world_step_size=0.02, decision_repeat=5,
            vehicle_config=dict(image_source='rgb_camera', rgb_camera=(self.width, self.height),
                                stack_size=1)))
        self.pbr_off = False
        self.use_expert = bool(options.get('expert', False))
        self.expert = None
        self.label = None
        self.steps = 0
        self.prev_yaw = 0.0
        self.lines = {'solid': False, 'broken': False}

    def _setup_camera(self):
        """Move the camera to CARLA's front mount and switch the hidden main view off.

        MetaDrive 0.3.0.1's RGBCamera sits 0.8 m forward and 1.5 m up, looks 0.2 m down
        over 1.6 m, with a 60 degree FOV and a fixed 2:1 aspect; all four can be set on its
        Panda3D camera and lens, which are shared by every vehicle (one singleton).
        """
        camera = self.env.vehicle.image_sensors['rgb_camera']
        cam, lens = camera.get_cam(), camera.get_lens()
        cam.setPos(0.0, CAMERA_FORWARD, CAMERA_UP)
        cam.lookAt(0.0, CAMERA_FORWARD + 10.0, CAMERA_UP)  # level, as CARLA's default pitch 0
        lens.setFov(CAMERA_FOV)
        lens.setAspectRatio(self.width / self.height)
        if not self.pbr_off:
            # The main camera's PBR buffers render an unseen scene at ~1.3 s a frame.
            for buffer in self.env.engine.pbrpipe.manager.buffers:
                buffer.set_active(False)
            self.pbr_off = True

    def reset(self, seed: int) -> tuple[dict, bytes]:
        """Start the scenario `seed`; return the first state and image."""
        obs = self.env.reset(force_seed=int(seed))
        self._setup_camera()
        # The first observation was rendered before the camera moved: render it again.
        obs = self.env.observations[self.env.DEFAULT_AGENT].observe(self.env.vehicle)
        self.steps = 0
        vehicle = self.env.vehicle
        self.prev_yaw = -float(vehicle.heading_theta)
        self.lines = {'solid': False, 'broken': False}
        if self.use_expert:
            # Next to this file in the worker's sys.path[0]; absent from the main venv's path.
            from metadrive_expert import make_expert
            self.expert = make_expert(vehicle, int(seed))
        state = self._state(obs, {}, False)
        state['route'] = self._route()
        state['dt'] = self.dt
        return state, self._image(obs)

    def step(self, steer: float, throttle: float, brake: float) -> tuple[dict, bytes]:
        """Advance one step (0.1 s) with a CARLA command; return the state and image."""
        obs, reward, done, info = self.env.step(metadrive_action(steer, throttle, brake))
        self.steps += 1
        state = self._state(obs, info, done)
        state['reward'] = float(reward)  # MetaDrive's own reward, for evaluation returns
        return state, self._image(obs)

    def _image(self, obs) -> bytes:
        """Return the camera image as BGR uint8 bytes (MetaDrive gives BGR floats in 0..1)."""
        image = np.asarray(obs['image'])[..., -1] if isinstance(obs, dict) else obs
        return np.ascontiguousarray(np.rint(image * 255.0).astype(np.uint8)).tobytes()

    def _state(self, obs, info: dict, done: bool) -> dict:
        """Return the pose, speed, events and episode end of the current step."""
        vehicle = self.env.vehicle
        x, y_md = (float(v) for v in vehicle.position)
        yaw = -float(vehicle.heading_theta)
        vx_md, vy_md = (float(v) for v in vehicle.velocity)
        vel_x, vel_y = vx_md, -vy_md  # map frame
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        yaw_rate = math.remainder(yaw - self.prev_yaw, math.tau) / self.dt
        self.prev_yaw = yaw
        solid = bool(vehicle.on_white_continuous_line or vehicle.on_yellow_continuous_line)
        broken = bool(vehicle.on_broken_line)
        # Like CARLA's sensor, one event per crossing: when the contact with a line starts.
        invasion = []
        if solid and not self.lines['solid']:
            invasion.append('solid')
        if broken and not self.lines['broken']:
            invasion.append('broken')
        self.lines = {'solid': solid, 'broken': broken}
        collisions = [kind for kind, flag in (
            ('vehicle', vehicle.crash_vehicle), ('object', vehicle.crash_object),
            ('building', vehicle.crash_building), ('sidewalk', vehicle.crash_sidewalk)) if flag]
        end = None
        if info.get('arrive_dest'):
            end = ('terminated', 'arrived')
        elif info.get('crash_vehicle') or info.get('crash_object') or info.get('crash_building'):
            end = ('terminated', 'crash')
        elif info.get('out_of_road'):
            end = ('terminated', 'out_of_road')
        elif done or (self.max_steps and self.steps >= self.max_steps):
            end = ('truncated', 'time_limit')
        self.label = None
        if self.expert is not None and end is None:
            from metadrive_expert import carla_command
            self.label = carla_command(self.expert.act())
        return {
            'ok': True, 'x': x, 'y': -y_md, 'yaw': yaw, 'expert': self.label,
            'vx': cos_yaw * vel_x + sin_yaw * vel_y, 'vy': -sin_yaw * vel_x + cos_yaw * vel_y,
            'yaw_rate': yaw_rate, 'speed': float(vehicle.speed),
            'steps': self.steps, 'collisions': collisions, 'lane_invasion': invasion,
            'end': end, 'width': self.width, 'height': self.height,
        }

    def _route(self) -> list[list[float]]:
        """Return the route's lane centres every ROUTE_SPACING m, as [x, y, yaw] in the map frame.

        The route follows navigation's checkpoints (road nodes) to the destination, keeping
        the ego car's lane number where a road has that many lanes (else its last lane).
        """
        navigation = self.env.vehicle.navigation
        graph = self.env.current_map.road_network.graph
        lane_number = int(self.env.vehicle.lane_index[2])
        points = []
        for start, end in zip(navigation.checkpoints[:-1], navigation.checkpoints[1:],
                              strict=True):
            lanes = graph[start][end]
            lane = lanes[min(lane_number, len(lanes) - 1)]
            offsets = np.arange(0.0, float(lane.length), ROUTE_SPACING)
            for s in offsets:
                px, py = lane.position(float(s), 0.0)
                heading = float(lane.heading_theta_at(float(s)))
                if points and math.hypot(px - points[-1][0], -py - points[-1][1]) < 0.5:
                    continue  # the next lane starts where the last ended
                points.append([float(px), float(-py), -heading])
        return points

    def close(self):
        """Close the env."""
        self.env.close()


def serve(options: dict, requests, replies):
    """Answer requests until `close` or end of input."""
    world = World(options)
    write_message(replies, {'ok': True, 'ready': True})
    while True:
        message = read_message(requests)
        if message is None or message[0].get('cmd') == 'close':
            break
        header = message[0]
        try:
            if header['cmd'] == 'reset':
                state, image = world.reset(int(header['seed']))
            elif header['cmd'] == 'step':
                state, image = world.step(float(header['steer']), float(header['throttle']),
                                          float(header['brake']))
            else:
                write_message(replies, {'ok': False, 'error': f'unknown cmd {header["cmd"]!r}'})
                continue
        except Exception as error:  # noqa: BLE001 - the client decides; this process goes on
            write_message(replies, {'ok': False, 'error': f'{type(error).__name__}: {error}'})
            continue
        write_message(replies, state, image)
    world.close()


def main():
    """Read options as JSON from argv[1], then serve on stdin/stdout."""
    options = json.loads(sys.argv[1])
    # Panda3D and MetaDrive print to stdout: keep the protocol on a private copy of it.
    replies = os.fdopen(os.dup(1), 'wb')
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(options, sys.stdin.buffer, replies)
    replies.close()
    # MetaDrive's interpreter exit has ended in SIGABRT: leave without running it.
    os._exit(0)


if __name__ == '__main__':
    main()
