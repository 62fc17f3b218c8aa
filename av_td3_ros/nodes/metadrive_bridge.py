"""Serve a MetaDrive world on the CARLA ROS bridge topics, as sim_bridge serves CarRacing.

MetaDrive runs in a worker process in its own venv (`sim/metadrive_client.py`; set it up
with `bash scripts/setup.sh --metadrive`). `<role>` is the `role_name` parameter. Topics,
types, QoS and frames are sim_bridge's (see its docstring), with these differences:

* `/carla/<role>/rgb_front/image` bgra8 from MetaDrive's RGB camera, moved to CARLA's front
  mount (1.6 m forward, 1.5 m up, level, horizontal FOV 90 degrees)
* `/carla/<role>/collision` carla_msgs/CarlaCollisionEvent in every tick with a contact
  with a vehicle, an object, a building or the sidewalk (other_actor_id 0 and a zero
  normal_impulse: MetaDrive reports neither)
* `/carla/<role>/lane_invasion` carla_msgs/CarlaLaneInvasionEvent in the tick a contact
  with a line starts: LANE_MARKING_SOLID for solid white or yellow lines,
  LANE_MARKING_BROKEN for broken ones
* `/carla/<role>/waypoints` the lane centres of MetaDrive's navigation route to the
  destination, one pose per metre (as carla_waypoint_publisher spaces them), latched, sent at
  every episode start
* the map frame is MetaDrive's with y and yaw negated (right-handed; `sim/metadrive_worker.py`)
* `/av_td3/<role>/episode_end`: `terminated:arrived`, `terminated:crash` (a vehicle, object
  or building), `terminated:out_of_road`, `truncated:time_limit`, and
  `truncated:bad_command` (a non-finite steer, throttle or brake: the world does not step) or
  `truncated:simulator_fault` (the worker died or hung; the next episode starts a new one).
  No return field: MetaDrive's reward is not this package's.

Every tick is one MetaDrive step of 0.1 s (`/carla/status` fixed_delta_seconds 0.1). Only
synchronous mode: a command stamped zero or not older than the latest frame ticks once; with
none for step_timeout wall seconds the world ticks with the last control. Commands are
clipped to CARLA's ranges, hand_brake is a full brake. The reset service, auto_reset and
episode_start are sim_bridge's; episode e uses scenario seed `seed + e`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from carla_msgs.msg import CarlaCollisionEvent, CarlaEgoVehicleControl, CarlaLaneInvasionEvent
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from av_td3_ros.nodes.bridge_messages import BRIDGE_QOS, VehicleTopics, time_msg
from av_td3_ros.nodes.node_main import guard_callback, run_node
from av_td3_ros.nodes.node_params import declare
from av_td3_ros.nodes.schema import Param, Schema
from av_td3_ros.sim.metadrive_client import (
    STEP_SECONDS,
    MetaDriveClient,
    MetaDriveConfig,
    MetaDriveState,
    SimulatorFault,
)
from av_td3_ros.task.episode_end import EpisodeEndMessage, format_episode_end

CAMERA_FOV = 90.0
LANE_MARKINGS = {'solid': CarlaLaneInvasionEvent.LANE_MARKING_SOLID,
                 'broken': CarlaLaneInvasionEvent.LANE_MARKING_BROKEN}


@dataclass(frozen=True)
class MetaDriveBridgeConfig:
    """Parameters of the metadrive_bridge node (defaults as in config/metadrive_bridge.yaml)."""

    role_name: str = 'ego_vehicle'
    image_width: int = 256
    image_height: int = 144
    traffic_density: float = 0.1
    map: str = '3'
    seed: int = 0
    scenarios: int = 10000
    max_episode_steps: int = 1000
    step_timeout: float = 1.0
    worker_timeout: float = 30.0
    start_timeout: float = 120.0
    auto_reset: bool = True
    sky: bool = False
    metadrive_python: str = ''
    run_dir: str = ''


_bridge = partial(Param.of, MetaDriveBridgeConfig)

METADRIVE_BRIDGE = Schema(
    'metadrive_bridge',
    _bridge('role_name', 'CARLA role name used in every topic name'),
    _bridge('image_width', 'camera image width (px)', 16, 4096),
    _bridge('image_height', 'camera image height (px)', 16, 4096),
    _bridge('traffic_density', 'MetaDrive traffic density (vehicles per lane and 10 m, '
            'roughly)', 0.0, 1.0),
    _bridge('map', "MetaDrive map: a number of blocks ('3') or a block string ('SCrRX')"),
    _bridge('seed', 'scenario seed of episode 0; episode e uses seed + e', 0, 2**31 - 1),
    _bridge('scenarios', 'scenario seeds in use: seed to seed + scenarios - 1 (then wraps)',
            1, 10**6),
    _bridge('max_episode_steps', 'truncate episodes after this many steps; 0: never',
            0, 10**9),
    _bridge('step_timeout', 'tick anyway after this many wall seconds without a command; 0 '
            'disables', 0.0, 3600.0),
    _bridge('worker_timeout', 'a step or reset taking longer is a simulator fault (s)',
            1.0, 3600.0),
    _bridge('start_timeout', 'seconds for a new MetaDrive worker to build its world',
            1.0, 3600.0),
    _bridge('auto_reset', 'start a new episode on the tick after one ends'),
    _bridge('sky', 'draw the sky box (a horizon; slower on a software renderer)'),
    _bridge('metadrive_python', "the MetaDrive venv's python; '' : $AV_TD3_METADRIVE_VENV or "
            "the checkout's .venv-metadrive"),
    _bridge('run_dir', "shader caches and the worker log; '': a temporary directory"),
)
"""Every metadrive_bridge parameter (config/metadrive_bridge.yaml)."""


def episode_end_text(state: MetaDriveState, stamp_ns: int) -> str:
    """Return the episode_end text for the state that ended an episode."""
    kind, reason = state.end
    return format_episode_end(EpisodeEndMessage(kind, reason, steps=state.steps,
                                                stamp_ns=stamp_ns))


class MetaDriveBridgeNode(Node):
    """Step a MetaDrive world and publish it like the CARLA ROS bridge; see the module doc."""

    def __init__(self):
        """Read parameters, start the worker and publishers, start episode 0."""
        super().__init__('metadrive_bridge')
        self.config = cfg = MetaDriveBridgeConfig(**declare(self, METADRIVE_BRIDGE))
        self.client = MetaDriveClient(MetaDriveConfig(
            image_width=cfg.image_width, image_height=cfg.image_height,
            traffic_density=cfg.traffic_density, map=cfg.map, start_seed=cfg.seed,
            scenarios=cfg.scenarios, max_episode_steps=cfg.max_episode_steps, sky=cfg.sky,
            python=cfg.metadrive_python, run_dir=cfg.run_dir,
            start_timeout=cfg.start_timeout, step_timeout=cfg.worker_timeout))
        if not self.client.python.is_file():
            raise FileNotFoundError(f'no MetaDrive interpreter at {self.client.python}: run '
                                    '`bash scripts/setup.sh --metadrive`')
        role = cfg.role_name
        self.topics = VehicleTopics(self, role, cfg.image_width, cfg.image_height, CAMERA_FOV,
                                    STEP_SECONDS, synchronous_mode=True)
        self._pub_collision = self.create_publisher(
            CarlaCollisionEvent, f'/carla/{role}/collision', BRIDGE_QOS)
        self.create_subscription(CarlaEgoVehicleControl, f'/carla/{role}/vehicle_control_cmd',
                                 guard_callback(self, self._on_control), BRIDGE_QOS)
        self.create_service(Trigger, f'/av_td3/{role}/reset_episode',
                            guard_callback(self, self._on_reset))
        self._bgra = np.full((cfg.image_height, cfg.image_width, 4), 255, np.uint8)

        self._delta_ns = round(STEP_SECONDS * 1e9)
        self._frame = -1
        self._stamp_ns = 0
        self._stamp = time_msg(0)
        self._episode = -1
        self._control = (0.0, 0.0, 0.0)
        self._episode_wall_start = time.monotonic()
        self._running = False  # an episode is being stepped

        self._watchdog = None
        if cfg.step_timeout > 0.0:
            self._watchdog = self.create_timer(
                cfg.step_timeout, guard_callback(self, self._tick),
                clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._start_episode()
        self.get_logger().info(
            f'metadrive_bridge ready: role {role}, {cfg.image_width}x{cfg.image_height} bgra8, '
            f'map {cfg.map}, traffic density {cfg.traffic_density}, worker pid '
            f'{self.client.worker_pid}')

    def _on_control(self, msg: CarlaEgoVehicleControl):
        """Store the command and tick, unless it answers a frame older than the latest."""
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if stamp_ns != 0 and stamp_ns < self._stamp_ns:
            return  # a duplicate or late answer must not tick the world a second time
        # Non-finite values pass unclipped: the client ends the episode as bad_command.
        self._control = (msg.steer, msg.throttle, 1.0 if msg.hand_brake else msg.brake)
        self._tick()

    def _on_reset(self, request, response):
        """Start a new episode now, whatever the state of the current one."""
        previous_steps = self.client.last_steps
        if self._running:
            self._log_episode('reset_requested', previous_steps)
        response.success = self._start_episode()
        response.message = (f'episode={self._episode};stamp_ns={self._stamp_ns};'
                            f'previous_steps={previous_steps}')
        return response

    def _tick(self):
        """Advance the world one tick: a step, or the (re)start after an episode ended."""
        if not self._running:
            if self.config.auto_reset:
                self._start_episode()
            return
        state = self.client.step(*self._control)
        self._advance_clock()
        self._publish_state(state)
        if state.done:
            self._running = False
            self.topics.end_episode(episode_end_text(state, self._stamp_ns))
            kind, reason = state.end
            detail = state.info.get('detail')
            self._log_episode(f'{kind}:{reason}' + (f' ({detail})' if detail else ''),
                              state.steps)

    def _start_episode(self) -> bool:
        """Reset the world on the next scenario; return False when the simulator failed."""
        self._episode += 1
        cfg = self.config
        seed = cfg.seed + self._episode % cfg.scenarios
        try:
            state = self.client.reset(seed)
        except SimulatorFault as error:
            # The next tick (a command or the watchdog) tries again with a new worker.
            self.get_logger().error(f'episode {self._episode}: simulator fault at reset '
                                    f'({error}); retrying on the next tick')
            self._running = False
            return False
        self._running = True
        self._control = (0.0, 0.0, 0.0)
        self._episode_wall_start = time.monotonic()
        self._advance_clock()
        self.topics.new_episode(self._stamp, self._episode, state.route[:, :2],
                                state.route[:, 2])
        self._publish_state(state)
        return True

    def _advance_clock(self):
        """Count one world tick and move sim time on by one MetaDrive step."""
        self._frame += 1
        self._stamp_ns = self._frame * self._delta_ns
        self._stamp = time_msg(self._stamp_ns)
        if self._watchdog is not None:
            self._watchdog.reset()

    def _publish_state(self, state: MetaDriveState):
        """Publish this tick's collisions, then every bridge topic (the image last)."""
        for _ in state.collisions:
            event = CarlaCollisionEvent()
            event.header.stamp = self._stamp
            event.header.frame_id = f'{self.config.role_name}/collision'
            self._pub_collision.publish(event)
        self._bgra[..., :3] = state.image
        self.topics.publish_tick(self._stamp, self._frame, state, state.control,
                                 self._bgra.tobytes(),
                                 [LANE_MARKINGS[kind] for kind in state.lane_invasion])

    def _log_episode(self, how: str, steps: int):
        """Log the progress line of one finished episode."""
        wall = max(time.monotonic() - self._episode_wall_start, 1e-9)
        self.get_logger().info(
            f'episode {self._episode} {how}: steps {steps}, sim time '
            f'{self._stamp_ns / 1e9:.2f} s, {steps / wall:.1f} steps/s')

    def destroy_node(self):
        """Stop the worker, then destroy the node."""
        self.client.close()
        return super().destroy_node()


def main(args=None):
    """Run the metadrive_bridge node until shutdown."""
    run_node(MetaDriveBridgeNode, args)


if __name__ == '__main__':
    main()
