"""Driver node: CARLA bridge camera + odometry + route in, CarlaEgoVehicleControl out.

One control command per processed camera frame, stamped with the frame's stamp. Only the
newest frame is kept (keep-last-1 subscription); inference never queues frames. When anything
is wrong - no checkpoint, a bad frame, a stalled camera, no odometry, non-finite actions - the
node says why (throttled log + diagnostics) and commands a full brake.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from carla_msgs.msg import CarlaEgoVehicleControl
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import Marker, MarkerArray

from av_td3_ros.driving.decision import Decision, DriverInputs, Reason, Severity
from av_td3_ros.driving.frame_pacer import FramePacer
from av_td3_ros.driving.hot_reload import (
    LoadedPolicy,
    LoadFailure,
    PolicyReloader,
    Poll,
    random_policy,
)
from av_td3_ros.driving.pipeline import DrivingPipeline
from av_td3_ros.driving.ros_conversions import fill_control_msg
from av_td3_ros.nodes.driver_config import read_config
from av_td3_ros.nodes.node_main import guard_callback, run_node
from av_td3_ros.nodes.policy_topic import PolicyReceiver
from av_td3_ros.nodes.transport import reliable, shared_memory_limit
from av_td3_ros.nodes.watchdog import StallWatchdog
from av_td3_ros.policy.control import SAFE_STOP, ControlCommand
from av_td3_ros.policy.features import Pose2D
from av_td3_ros.policy.inference import resolve_device
from av_td3_ros.policy.inference_onnx import build_runner
from av_td3_ros.task.episode_label import parse_episode_label
from av_td3_ros.throttled_log import ThrottledLog

LOG_THROTTLE_S = 2.0
FRAMES_MISSING_AFTER_S = 5.0
"""Camera publishers matched this long without a single frame: say the transport limit."""


class RateMeter:
    """Count events and keep recent latencies for diagnostics."""

    def __init__(self, window: int = 200):
        """Keep the last `window` latency samples."""
        self.latencies = np.zeros(window)
        self.count = 0
        self._since = time.monotonic()
        self._count_since = 0

    def add(self, latency_ms: float):
        """Record one event and its latency."""
        self.latencies[self.count % len(self.latencies)] = latency_ms
        self.count += 1

    def rate(self) -> float:
        """Return events per second since the previous call."""
        now = time.monotonic()
        rate = (self.count - self._count_since) / max(now - self._since, 1e-9)
        self._since, self._count_since = now, self.count
        return rate

    def mean_ms(self) -> float:
        """Return the mean of the recent latencies (0 when none)."""
        n = min(self.count, len(self.latencies))
        return float(self.latencies[:n].mean()) if n else 0.0


class DriverNode(Node):
    """Drive the ego vehicle from its camera with a TD3 actor."""

    def __init__(self):
        """Read parameters, load the policy (or refuse to drive) and wire the topics."""
        super().__init__('driver')
        self.config = cfg = read_config(self)
        torch.set_num_threads(cfg.torch_threads)
        try:
            self.device = resolve_device(cfg.device)
        except ValueError as error:
            self.get_logger().error(f'{error}; running on CPU')
            self.device = resolve_device('cpu')
        self.precision = ('tf32 allowed' if cfg.allow_tf32 and self.device.type == 'cuda'
                          else 'float32')
        self.pipeline = DrivingPipeline(cfg.spec, None, cfg.exploration, cfg.expert)
        self.backend = cfg.backend  # the one in use once a policy is loaded
        self.status = 'no policy'
        self.reloader = PolicyReloader(cfg.spec, self._runner_for, cfg.checkpoint,
                                       on_ready=self._on_policy_ready,
                                       on_refused=self._on_policy_refused)
        self.inputs = DriverInputs(self.pipeline, cfg.odometry_timeout, cfg.require_route,
                                   route_spacing=cfg.route_spacing)
        self._stalled = False
        self.processed = RateMeter()
        self.stage_meters = {}  # stage name -> RateMeter of its cost in ms
        self.bad_frames = 0
        self.last_decision = Decision.brake(Reason.WAITING_FOR_CAMERA)
        """The newest frame's decision (or the node's own brake); /diagnostics report it."""
        self._log_throttled = ThrottledLog(self.get_logger(), LOG_THROTTLE_S)
        self._callback_guards = []
        self._started = time.monotonic()
        self._frames_missing_reported = False
        self._frame_rate = 0.0
        self._reported_reason = None
        self._last_frame_stamp = ''

        self.policy_in_use_pub = self.create_publisher(String, cfg.policy_in_use_topic,
                                                       reliable(1, latched=True))
        self._load_initial_policy()
        # Deep enough that a trainer busy for a moment still gets every command (it pairs
        # each frame with its command); commands are 100 bytes.
        self.control_pub = self.create_publisher(CarlaEgoVehicleControl, cfg.control_topic,
                                                 reliable(100))
        camera_qos = (reliable(1) if cfg.camera_reliable else
                      QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability))
        self.create_subscription(Odometry, cfg.odometry_topic, self._guard(self.on_odometry), 10)
        self.create_subscription(PathMsg, cfg.route_topic, self._guard(self.on_route),
                                 reliable(1, latched=cfg.route_transient_local))
        self.create_subscription(Header, cfg.episode_start_topic,
                                 self._guard(self.on_episode_start), 10)
        # Created last: when a frame and its tick's odometry wait together, the executor
        # serves the earlier-created subscriptions first, so the frame sees that odometry.
        self.camera_sub = self.create_subscription(
            Image, cfg.camera_topic, self._guard(self.on_image, self._brake_after_error),
            camera_qos)
        if cfg.publish_debug:
            self.debug_pub = self.create_publisher(Image, '~/debug/frame_stack', 1)
            self.marker_pub = self.create_publisher(MarkerArray, '~/debug/control_markers', 1)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._control_msg = CarlaEgoVehicleControl()
        self._stop_msg = CarlaEgoVehicleControl()  # the watchdog thread's own message
        # Timers on the steady clock: with use_sim_time they would stop with /clock, i.e.
        # exactly when the simulator died and the brake and the diagnostics matter most.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(cfg.diagnostics_period, self._guard(self.publish_diagnostics),
                          clock=steady)
        if cfg.checkpoint and cfg.checkpoint_poll_period > 0.0:
            self.create_timer(cfg.checkpoint_poll_period, self._guard(self.poll_checkpoint),
                              clock=steady)
        # One-shot (cancelled when it fires), restarted by each frame: see _schedule_warm_up.
        self.pacer = FramePacer(cfg.warm_up_lead)
        self.warm_ups = 0
        self._warm_timer = self.create_timer(1.0, self._guard(self.on_warm_up), clock=steady,
                                             autostart=False)
        self.watchdog = StallWatchdog(cfg.frame_timeout, cfg.stop_repeat_period, self.on_stall,
                                      self._on_watchdog_error)
        self.watchdog.start()
        if cfg.policy_topic:  # each received policy goes through the file loader
            self.policy_receiver = PolicyReceiver(self, cfg.policy_topic, self.reloader.load)
        self.get_logger().info(
            f'driving {cfg.role_name}: camera {cfg.camera_topic} -> {cfg.control_topic} on '
            f'{self.device} ({self.precision}), mode {cfg.exploration.mode}, status: '
            f'{self.status}')

    def _load_initial_policy(self):
        if self.config.checkpoint:
            self.poll_checkpoint(block=True)  # a good file starts at once (_on_policy_ready)
        elif self.config.exploration.mode == 'expert':
            self.status = 'route expert (mode expert)'
        elif self.config.allow_random_policy:
            policy = random_policy(self.config.spec, self.config.seed)
            self.pipeline.set_runner(self._runner_for(policy))
            self.status = 'random policy (allow_random_policy)'
        elif self.config.policy_topic:
            self.status = f'waiting for a policy on {self.config.policy_topic}'
        else:
            self.get_logger().error(
                'no checkpoint given: refusing to drive (publishing full brake). Set '
                'checkpoint:=<file or dir>, or allow_random_policy:=true for a random policy.')

    def _runner_for(self, policy):
        """Return the configured backend's runner for `policy` (torch if it cannot run)."""
        runner, self.backend = build_runner(policy, self.device, self.config.backend,
                                            self.config.allow_tf32)
        if self.config.backend == 'auto':  # checked again at every load: say what won
            self.get_logger().info(f'inference backend: {self.backend}')
        elif self.backend != self.config.backend:
            self._log_throttled('warn', 'backend', f'backend {self.config.backend} not used: '
                                f'{self.backend}', period=60.0)
        return runner

    def poll_checkpoint(self, block: bool = False):
        """Load the configured checkpoint if it is new; off the camera thread unless `block`."""
        if self.reloader.poll(block) is not Poll.MISSING:
            return
        # While exploring randomly a missing policy is expected (a trainer writes it soon),
        # so it is no error yet.
        exploring = self.pipeline.exploring_randomly
        self._log_throttled(
            'warn' if exploring else 'error', 'checkpoint',
            f'checkpoint {self.config.checkpoint} not found: '
            + ('random actions meanwhile' if exploring else 'braking until it appears'),
            period=10.0 if exploring else 2.0)

    def _on_policy_ready(self, loaded: LoadedPolicy):
        # Nothing drives yet, so no frame can be in the middle of using a policy: start now
        # (its 'loaded' line and status come without waiting for a frame).
        if self.pipeline.runner is None:
            self._swap_pending()

    def _on_policy_refused(self, failure: LoadFailure):
        self.get_logger().error(f'{failure.text}; '
                                + ('keeping the current policy' if self.pipeline.runner
                                   else 'braking'))

    def _swap_pending(self):
        if self.pipeline.evaluating and self.pipeline.runner is not None:
            return  # an evaluation scores one policy: a newer one waits for training
        loaded = self.reloader.take()
        if loaded is not None:
            self.pipeline.set_runner(loaded.runner)
            self.status = f'policy {loaded.description}'
            self.policy_in_use_pub.publish(String(data=loaded.path.name))
            self.get_logger().info(f'loaded {loaded.description}')

    def _guard(self, callback, on_error=None):
        """Wrap a callback so no exception from it ends the node (see callback_guard)."""
        guarded = guard_callback(self, callback, on_error)
        self._callback_guards.append(guarded)
        return guarded

    def _brake_after_error(self, msg):
        """Answer a frame whose callback raised with a full brake carrying its stamp."""
        self.last_decision = Decision.brake(Reason.INTERNAL_ERROR)
        stamp = (msg.header.stamp if msg is not None and hasattr(msg, 'header')
                 else self.get_clock().now().to_msg())
        self.publish_control(SAFE_STOP, stamp)

    def on_odometry(self, msg: Odometry):
        """Keep recent odometry (the frame picks the one of its own tick); refuse bad values."""
        problem = self.inputs.on_odometry(msg, time.monotonic())
        if problem is not None:
            self._log_throttled('warn', 'bad_odometry', f'bad odometry ignored, braking until '
                                f'good odometry arrives: {problem} '
                                f'({self.inputs.bad_odometry} so far)')

    def on_route(self, msg: PathMsg):
        """Keep the route; a route that cannot be driven along counts as no route."""
        problem = self.inputs.on_route(msg)
        if problem is not None:
            self.get_logger().error(f'route refused ({len(msg.poses)} poses): {problem}; '
                                    + ('braking until a usable route arrives'
                                       if self.config.require_route else 'driving without'))

    def on_episode_start(self, msg: Header):
        """Reset the frame stack; act without noise in evaluation episodes.

        Frames of the previous episode must not leak into this one.
        """
        self.pipeline.reset_episode()
        self.pipeline.evaluating = parse_episode_label(msg.frame_id).evaluating
        if not self.pipeline.evaluating:
            self._swap_pending()  # a checkpoint held back during an evaluation
        self.get_logger().info(f'episode {msg.frame_id[:40]} starts: frame stack reset')

    def on_image(self, msg: Image):
        """Turn one camera frame into exactly one control command."""
        arrived = time.monotonic()
        received = time.perf_counter()
        self.watchdog.feed()
        if self._stalled:
            self._stalled = False
            # The silence is not a frame interval: kept, it would stop warm-ups for a whole
            # window of frames; forgotten, they resume after a few steady ones.
            self.pacer.reset()
            self.get_logger().info('camera frames are back')
        self._swap_pending()  # hot reload happens between frames, never during one
        decision = self.inputs.decide(msg, time.monotonic())
        self._log_decision(decision)
        self.last_decision = decision
        self._last_frame_stamp = f'{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}'
        start = time.perf_counter()
        self.publish_control(decision.command, msg.header.stamp)
        publish_ms = (time.perf_counter() - start) * 1e3
        self.processed.add((time.perf_counter() - received) * 1e3)
        result = decision.step
        if result is not None:
            for stage, cost_ms in dict(result.timings_ms, publish=publish_ms).items():
                self.stage_meters.setdefault(stage, RateMeter()).add(cost_ms)
        if self.config.publish_debug and result is not None:
            self.publish_debug(msg.header, decision.command)
        if not decision.reason.drives or decision.text != self._reported_reason:
            # Every brake is reported at once with its reason and the frame's stamp, and so
            # is driving again; a driving stream only gets the periodic status.
            self._publish_status()
        self._schedule_warm_up(arrived)

    def _schedule_warm_up(self, arrived: float):
        """Arm the warm-up timer to fire `warm_up_lead` before the next frame is due."""
        delay = self.pacer.frame(arrived)
        # The timer counts from now, after this frame's own processing.
        remaining = None if delay is None else delay - (time.monotonic() - arrived)
        if remaining is None or remaining <= 0.0:
            self._warm_timer.cancel()
            return
        self._warm_timer.timer_period_ns = int(remaining * 1e9)
        self._warm_timer.reset()

    def on_warm_up(self):
        """Run the pipeline once on the newest inputs (see `DrivingPipeline.warm_up`)."""
        self._warm_timer.cancel()  # once per frame; the next frame re-arms it
        if self.pipeline.warm_up():
            self.warm_ups += 1

    def _log_decision(self, decision: Decision):
        """Log a brake at its reason's severity, throttled per reason (not per detail)."""
        reason = decision.reason
        if reason is Reason.BAD_FRAME:
            self.bad_frames += 1
        if reason.severity is not Severity.DRIVING:
            self._log_throttled(reason.severity.value, f'brake:{reason.name}',
                                decision.log_message)

    def publish_control(self, command: ControlCommand, stamp, msg=None):
        """Publish one CarlaEgoVehicleControl (reusing the message object)."""
        msg = self._control_msg if msg is None else msg
        fill_control_msg(msg, command, stamp, self.config.role_name)
        try:
            self.control_pub.publish(msg)
        except Exception as error:  # rclpy raises RCLError when DDS is saturated
            self._log_throttled('error', 'publish', f'failed to publish control: {error}')

    def on_stall(self, silent_for: float | None):
        """Brake while the camera is silent (called by the watchdog thread, steady clock)."""
        if silent_for is not None and not self._stalled:
            self._stalled = True
            self.get_logger().error(
                f'no camera frame for {silent_for:.2f} s (frame_timeout '
                f'{self.config.frame_timeout} s): braking until frames return')
        self.last_decision = Decision.brake(Reason.CAMERA_STALLED if silent_for is not None
                                            else Reason.WAITING_FOR_CAMERA)
        # Its own message object: the executor thread may be filling _control_msg right now.
        self.publish_control(SAFE_STOP, self.get_clock().now().to_msg(), self._stop_msg)

    def _on_watchdog_error(self, error: Exception):
        self._log_throttled('error', 'watchdog', f'watchdog brake failed: '
                            f'{type(error).__name__}: {error}')

    def check_camera_transport(self):
        """Say once when camera publishers are matched but no frame has ever arrived."""
        if self._frames_missing_reported or self.processed.count > 0:
            return
        waited = time.monotonic() - self._started
        publishers = self.camera_sub.get_publisher_count()
        if publishers == 0 or waited < FRAMES_MISSING_AFTER_S:
            return
        self._frames_missing_reported = True
        limit = shared_memory_limit()
        self.get_logger().error(
            f'{publishers} camera publisher(s) matched on {self.config.camera_topic} but no '
            f'frame arrived in {waited:.0f} s. Frames larger than the transport can carry are '
            f'dropped silently: {limit}. Check the camera resolution and '
            'FASTDDS_DEFAULT_PROFILES_FILE on both sides (docs/transport.md).')

    def destroy_node(self):
        """Stop the watchdog thread, then destroy the node."""
        self.watchdog.stop()
        return super().destroy_node()

    def publish_debug(self, header, command: ControlCommand):
        """Publish the frame stack as one mono8 strip and the command as rviz markers."""
        if self.debug_pub.get_subscription_count() > 0:
            pixels = self.inputs.debug_image()
            image = Image(header=header, height=pixels.shape[0], width=pixels.shape[1],
                          encoding='mono8', is_bigendian=0, step=pixels.shape[1])
            image.data = pixels.tobytes()
            self.debug_pub.publish(image)
        if self.marker_pub.get_subscription_count() > 0:
            pose = self.inputs.latest_pose() or Pose2D(0, 0, 0)
            # In the map frame at the vehicle's pose: needs no TF from the simulator.
            self.marker_pub.publish(control_markers(header.stamp, 'map', pose, command))

    def publish_diagnostics(self):
        """Publish model, frame-rate and latency status on /diagnostics (periodic)."""
        self.check_camera_transport()
        self._frame_rate = self.processed.rate()
        self._publish_status()

    def _publish_status(self):
        """Publish the status now (periodically, and at once when a frame's reason changes).

        `last_frame_stamp` names the frame `last_reason` was decided for.
        """
        decision = self.last_decision
        self._reported_reason = decision.text
        status = DiagnosticStatus(name=f'av_td3_ros driver ({self.config.role_name})',
                                  hardware_id=self.config.role_name)
        driving = not self._stalled and decision.reason.drives
        status.level = DiagnosticStatus.OK if driving else DiagnosticStatus.WARN
        status.message = self.status if driving else f'braking: {decision.text}'
        values = {'model': self.status, 'device': str(self.device), 'backend': self.backend,
                  'frame_rate_hz': f'{self._frame_rate:.2f}',
                  'frames_processed': str(self.processed.count),
                  'bad_frames': str(self.bad_frames),
                  'bad_odometry': str(self.inputs.bad_odometry),
                  'bad_routes': str(self.inputs.bad_routes),
                  'callback_errors': str(sum(guard.errors for guard in self._callback_guards)),
                  'watchdog_brakes': str(self.watchdog.stalls),
                  'warm_ups': str(self.warm_ups),
                  'precision': self.precision,
                  'callback_ms_mean': f'{self.processed.mean_ms():.3f}',
                  'last_reason': decision.text,
                  'last_frame_stamp': self._last_frame_stamp}
        values.update({f'{stage}_ms_mean': f'{meter.mean_ms():.3f}'
                       for stage, meter in self.stage_meters.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)


def control_markers(stamp, frame_id: str, pose: Pose2D,
                    command: ControlCommand) -> MarkerArray:
    """Build rviz markers at `pose`: a steering arrow, throttle/brake bars and a text label."""
    markers = []
    arrow = Marker(ns='control', id=0, type=Marker.ARROW, action=Marker.ADD)
    # Arrow yaw = heading minus steer (positive steer turns right in CARLA); 0.6 rad at full
    # lock is only for display.
    half_yaw = 0.5 * (pose.yaw - 0.6 * command.steer)
    arrow.pose.orientation.z = float(np.sin(half_yaw))
    arrow.pose.orientation.w = float(np.cos(half_yaw))
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 3.0, 0.3, 0.3
    arrow.color.g, arrow.color.a = 1.0, 1.0
    markers.append(arrow)
    for idx, (value, red, green, y) in enumerate(((command.throttle, 0.0, 1.0, 1.5),
                                                  (command.brake, 1.0, 0.0, -1.5)), start=1):
        bar = Marker(ns='control', id=idx, type=Marker.CUBE, action=Marker.ADD)
        bar.scale.x, bar.scale.y, bar.scale.z = 0.3, 0.3, max(float(value) * 2.0, 0.01)
        bar.pose.position.x = -y * float(np.sin(pose.yaw))
        bar.pose.position.y = y * float(np.cos(pose.yaw))
        bar.pose.position.z = bar.scale.z / 2.0
        bar.pose.orientation.w = 1.0
        bar.color.r, bar.color.g, bar.color.a = red, green, 1.0
        markers.append(bar)
    text = Marker(ns='control', id=3, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    text.text = (f'steer {command.steer:+.2f}  throttle {command.throttle:.2f}  '
                 f'brake {command.brake:.2f}')
    text.pose.position.z, text.pose.orientation.w = 3.0, 1.0
    text.scale.z = 0.6
    text.color.r = text.color.g = text.color.b = text.color.a = 1.0
    markers.append(text)
    for marker in markers:
        marker.header.stamp, marker.header.frame_id = stamp, frame_id
        marker.pose.position.x += pose.x
        marker.pose.position.y += pose.y
    return MarkerArray(markers=markers)


def main(args=None):
    """Run the driver node until shutdown."""
    run_node(DriverNode, args)

if __name__ == '__main__':
    main()
