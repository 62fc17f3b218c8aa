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
  `return=` is MetaDrive's own reward summed over the episode (not this package's reward)
  and the extra field `route_completion=<percent>` how far along the navigation route the
  car got (`sim/metadrive_results.RouteProgress`; 100 when it arrived), as
  `evaluate_policy --world metadrive` reports them.

Every tick is one MetaDrive step of 0.1 s (`/carla/status` fixed_delta_seconds 0.1). Only
synchronous mode: a command stamped zero or not older than the latest frame ticks once; with
none for step_timeout wall seconds the world ticks with the last control. Commands are
clipped to CARLA's ranges, hand_brake is a full brake. The reset service, auto_reset and
episode_start are sim_bridge's; episode e uses scenario seed `seed + e`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from carla_msgs.msg import CarlaCollisionEvent, CarlaEgoVehicleControl, CarlaLaneInvasionEvent

from av_td3_ros.nodes.bridge_messages import BRIDGE_QOS, VehicleTopics
from av_td3_ros.nodes.episode_bridge import EpisodeBridge
from av_td3_ros.nodes.node_main import run_node
from av_td3_ros.nodes.node_params import declare
from av_td3_ros.nodes.schema import Param, Schema
from av_td3_ros.sim.metadrive_client import (
    STEP_SECONDS,
    MetaDriveClient,
    MetaDriveConfig,
    MetaDriveState,
    SimulatorFault,
)
from av_td3_ros.sim.metadrive_results import RouteProgress, route_completion
from av_td3_ros.task.episode_end import EpisodeEndMessage

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


def episode_end(state: MetaDriveState, episode_return: float,
                progress: RouteProgress) -> EpisodeEndMessage:
    """Return the episode_end content (no stamp) for the state that ended an episode."""
    kind, reason = state.end
    completion = route_completion(reason, progress)
    return EpisodeEndMessage(kind, reason, episode_return=episode_return, steps=state.steps,
                             extra=(('route_completion', f'{completion:.3f}'),))


class MetaDriveBridgeNode(EpisodeBridge):
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
        topics = VehicleTopics(self, role, cfg.image_width, cfg.image_height, CAMERA_FOV,
                               STEP_SECONDS, synchronous_mode=True)
        self._pub_collision = self.create_publisher(
            CarlaCollisionEvent, f'/carla/{role}/collision', BRIDGE_QOS)
        self._bgra = np.full((cfg.image_height, cfg.image_width, 4), 255, np.uint8)
        self._running = False  # an episode is being stepped
        self._return = 0.0  # MetaDrive's reward summed over the episode so far
        self._progress = RouteProgress(np.zeros((0, 2)))
        self._serve(self.client, topics, role, STEP_SECONDS, step_timeout=cfg.step_timeout,
                    auto_reset=cfg.auto_reset)
        self.get_logger().info(
            f'metadrive_bridge ready: role {role}, {cfg.image_width}x{cfg.image_height} bgra8, '
            f'map {cfg.map}, traffic density {cfg.traffic_density}, worker pid '
            f'{self.client.worker_pid}')

    @property
    def episode_running(self) -> bool:
        """Return True from a successful reset until the episode ends."""
        return self._running

    def _command(self, msg: CarlaEgoVehicleControl) -> tuple[float, float, float]:
        """Return the command as sent; hand_brake is a full brake."""
        # Non-finite values pass unclipped: the client ends the episode as bad_command.
        return (msg.steer, msg.throttle, 1.0 if msg.hand_brake else msg.brake)

    def _reset_world(self, episode: int):
        """Reset the world on scenario `seed + episode` (wrapping after `scenarios`)."""
        cfg = self.config
        seed = cfg.seed + episode % cfg.scenarios
        try:
            state = self.client.reset(seed)
        except SimulatorFault as error:
            # The next tick (a command or the watchdog) tries again with a new worker.
            self.get_logger().error(f'episode {episode}: simulator fault at reset '
                                    f'({error}); retrying on the next tick')
            self._running = False
            return None
        self._running = True
        self._return = 0.0
        self._progress = RouteProgress(state.route)
        return state, state.route[:, :2], state.route[:, 2]

    def _step_world(self) -> MetaDriveState:
        """Step the worker with the stored control."""
        state = self.client.step(*self._control)
        self._running = not state.done
        self._return += float(state.info.get('reward', 0.0))
        self._progress.update(state.x, state.y)
        return state

    def _ending(self, state: MetaDriveState) -> tuple[EpisodeEndMessage, str]:
        """Return the episode_end content and the worker's detail of the end, if any."""
        detail = state.info.get('detail')
        return (episode_end(state, self._return, self._progress),
                f' ({detail})' if detail else '')

    def _totals(self) -> tuple[int, float]:
        """Return the steps and MetaDrive's summed reward of the latest episode."""
        return self.client.last_steps, self._return

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


def main(args=None):
    """Run the metadrive_bridge node until shutdown."""
    run_node(MetaDriveBridgeNode, args)


if __name__ == '__main__':
    main()
