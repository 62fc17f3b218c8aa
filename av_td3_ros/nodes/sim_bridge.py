"""Serve CarRacing-v3 (`sim_env.SimEnv`) on the CARLA ROS bridge topics, as a CARLA stand-in.

`<role>` is the `role_name` parameter. Publishes (reliable, volatile, depth 10 like the bridge
unless noted; all messages of one world tick carry its sim time as stamp):

* `/carla/<role>/rgb_front/image` sensor_msgs/Image bgra8, frame_id `<role>/rgb_front`
* `/carla/<role>/rgb_front/camera_info` sensor_msgs/CameraInfo (pinhole from `camera_fov`)
* `/carla/<role>/odometry` nav_msgs/Odometry, frame `map`, child `<role>`; twist in the body
  frame (x forward, y left), as the bridge publishes it
* `/carla/<role>/speedometer` std_msgs/Float32, signed forward speed in m/s (as the bridge)
* `/carla/<role>/vehicle_status` carla_msgs/CarlaEgoVehicleStatus: speed magnitude, map-frame
  acceleration, orientation and the control applied in this tick
* `/carla/<role>/lane_invasion` carla_msgs/CarlaLaneInvasionEvent, only in ticks where a
  wheel that was on the road left it (crossed_lane_markings = [LANE_MARKING_SOLID])
* `/carla/<role>/waypoints` nav_msgs/Path of the track centre line in driving order, frame
  `map`; depth 1 TRANSIENT_LOCAL (latched, as carla_waypoint_publisher does), sent at every
  episode start (every episode has a new track)
* `/carla/status` carla_msgs/CarlaStatus: frame = world tick counter, fixed_delta_seconds,
  synchronous_mode, synchronous_mode_running (= synchronous_mode)
* `/clock` rosgraph_msgs/Clock, the sim time
* `/av_td3/<role>/episode_start` std_msgs/Header (stamp = first frame of the episode,
  frame_id = episode number, from 0), latched so late joiners learn the current episode
* `/av_td3/<role>/episode_end` std_msgs/String, volatile (a late joiner must not see old
  endings): `<terminated|truncated>:<reason>;return=<float>;steps=<int>;stamp_ns=<int>`
  (`task/episode_end.py`), reasons lap_complete, off_playfield, off_track (terminated) and
  time_limit (truncated); return is the summed CarRacing reward, stamp_ns the last frame's.

Subscribes `/carla/<role>/vehicle_control_cmd` carla_msgs/CarlaEgoVehicleControl: steer,
throttle and brake are clipped to CARLA's ranges, hand_brake means full brake; reverse,
gear and manual_gear_shift are ignored (CarRacing has no reverse).

Service `/av_td3/<role>/reset_episode` std_srvs/Trigger starts a new episode at once (one
world tick); no episode_end is published for the episode it cuts short. The response message
is `episode=<n>;stamp_ns=<int>;previous_return=<float>;previous_steps=<int>`.

Tick k has /carla/status frame k and stamp k * fixed_delta_seconds; every tick is one
CarRacing step or one reset. With synchronous_mode true, a command whose header stamp is zero
or not older than the latest frame's ticks the world once; an older one is stale and ignored,
so a driver answering every frame gets exactly one new frame per command (frame 0's stamp 0
reads as unstamped: harmless while it is the latest frame). With no such command for
step_timeout wall seconds (0: never) the world ticks with the last control. With
synchronous_mode false the world ticks at publish_rate Hz and commands only set the control.
The tick that ends an episode publishes its last frame, then episode_end; with auto_reset the
next tick is the reset (new track, episode_start, first frame, zero control), without it the
world stays frozen until reset_episode. Episode e uses track seed `seed + e` (-1: unseeded).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from carla_msgs.msg import CarlaEgoVehicleControl, CarlaLaneInvasionEvent

from av_td3_ros.nodes.bridge_messages import VehicleTopics
from av_td3_ros.nodes.episode_bridge import EpisodeBridge
from av_td3_ros.nodes.node_main import run_node
from av_td3_ros.nodes.node_params import declare
from av_td3_ros.nodes.schema import Param, Schema
from av_td3_ros.sim.sim_env import SimEnv, SimEnvConfig, SimState, finite_clamp
from av_td3_ros.task.episode_end import EpisodeEndMessage


@dataclass(frozen=True)
class SimBridgeConfig:
    """Parameters of the sim_bridge node (defaults as in config/sim_bridge.yaml)."""

    role_name: str = 'ego_vehicle'
    image_width: int = 600
    image_height: int = 400
    camera_fov: float = 90.0
    seed: int = 0
    fixed_delta_seconds: float = 0.05
    synchronous_mode: bool = True
    step_timeout: float = 1.0
    max_episode_steps: int = 1000
    max_off_track_steps: int = 0
    publish_rate: float = 20.0
    auto_reset: bool = True
    route_spacing: float = 0.0


_bridge = partial(Param.of, SimBridgeConfig)

SIM_BRIDGE = Schema(
    'sim_bridge',
    _bridge('role_name', 'CARLA role name used in every topic name'),
    _bridge('image_width', 'camera image width (px)', 16, 4096),
    _bridge('image_height', 'camera image height (px)', 16, 4096),
    _bridge('camera_fov', 'horizontal field of view for camera_info (deg)', 1.0, 179.0),
    _bridge('seed', 'track seed of episode 0; episode e uses seed + e; -1: random',
            -1, 2**31 - 1),
    _bridge('fixed_delta_seconds', 'sim time per world tick (s)', 0.001, 1.0),
    _bridge('synchronous_mode', 'tick once per control command (else at publish_rate)'),
    _bridge('step_timeout', 'synchronous mode: tick anyway after this many wall seconds '
            'without a command; 0 disables', 0.0, 3600.0),
    _bridge('max_episode_steps', 'truncate episodes after this many steps; 0: never',
            0, 10**9),
    _bridge('max_off_track_steps', 'terminate after this many consecutive steps with all '
            'wheels off the road; 0: never', 0, 10**9),
    _bridge('publish_rate', 'asynchronous mode tick rate (Hz)', 0.1, 1000.0),
    _bridge('auto_reset', 'start a new episode on the tick after the env ends one'),
    _bridge('route_spacing', 'publish the route resampled every this many metres, as another '
            'planner would space it (CARLA: 1 m); 0: the centre line as is (~3.5 m)', 0.0, 1e3),
)
"""Every sim_bridge parameter (config/sim_bridge.yaml)."""


def episode_end(state: SimState) -> EpisodeEndMessage:
    """Return the episode_end content (no stamp) for the last state of an episode."""
    return EpisodeEndMessage('terminated' if state.terminated else 'truncated', state.reason,
                             episode_return=state.episode_return, steps=state.steps)


class SimBridgeNode(EpisodeBridge):
    """Step a SimEnv and publish it like the CARLA ROS bridge; see the module docstring."""

    def __init__(self):
        """Read parameters, build the simulator, publishers and timers, start episode 0."""
        super().__init__('sim_bridge')
        self.config = cfg = SimBridgeConfig(**declare(self, SIM_BRIDGE))
        self.env = SimEnv(SimEnvConfig(image_width=cfg.image_width,
                                       image_height=cfg.image_height,
                                       step_seconds=cfg.fixed_delta_seconds,
                                       max_episode_steps=cfg.max_episode_steps,
                                       max_off_track_steps=cfg.max_off_track_steps,
                                       route_spacing=cfg.route_spacing))
        role = cfg.role_name
        topics = VehicleTopics(self, role, cfg.image_width, cfg.image_height, cfg.camera_fov,
                               cfg.fixed_delta_seconds, cfg.synchronous_mode)
        self._serve(self.env, topics, role, cfg.fixed_delta_seconds,
                    step_timeout=cfg.step_timeout, auto_reset=cfg.auto_reset,
                    synchronous_mode=cfg.synchronous_mode, publish_rate=cfg.publish_rate)
        self.get_logger().info(
            f'sim_bridge ready: role {role}, {cfg.image_width}x{cfg.image_height} bgra8, '
            f'{"synchronous" if cfg.synchronous_mode else "asynchronous"} mode, '
            f'fixed_delta_seconds {cfg.fixed_delta_seconds}')

    @property
    def episode_running(self) -> bool:
        """Return True until the env ends the episode."""
        return not self.env.episode_over

    def _command(self, msg: CarlaEgoVehicleControl) -> tuple[float, float, float]:
        """Clip the command to CARLA's ranges; hand_brake is a full brake."""
        brake = 1.0 if msg.hand_brake else finite_clamp(msg.brake, 0.0, 1.0)
        return (finite_clamp(msg.steer, -1.0, 1.0), finite_clamp(msg.throttle, 0.0, 1.0), brake)

    def _reset_world(self, episode: int):
        """Reset the env on track `seed + episode` (unseeded for seed -1)."""
        seed = None if self.config.seed < 0 else self.config.seed + episode
        state = self.env.reset(seed)
        return state, self.env.waypoints, self.env.waypoint_yaws

    def _step_world(self) -> SimState:
        """Step the env with the stored control."""
        return self.env.step(*self._control)

    def _ending(self, state: SimState) -> tuple[EpisodeEndMessage, str]:
        """Return the episode_end content of the last state; no log detail."""
        return episode_end(state), ''

    def _totals(self) -> tuple[int, float]:
        """Return the env's steps and return of the latest episode."""
        return self.env.episode_steps, self.env.episode_return

    def _publish_state(self, state: SimState):
        """Publish every topic of one tick (`VehicleTopics.publish_tick`)."""
        markings = [CarlaLaneInvasionEvent.LANE_MARKING_SOLID] if state.lane_invasion else []
        self.topics.publish_tick(self._stamp, self._frame, state, state.control,
                                 state.frame.tobytes(), markings)


def main(args=None):
    """Run the sim_bridge node until shutdown."""
    run_node(SimBridgeNode, args)

if __name__ == '__main__':
    main()
