"""Run the episodes of a simulator bridge: ticks, the reset service, episode start and end.

`EpisodeBridge` is the part sim_bridge and metadrive_bridge share (see sim_bridge's module
docstring for the behaviour): the world tick counter and its sim-time stamps, the control
subscription with its stale-command rule, the step_timeout watchdog (or the fixed-rate
timer of asynchronous mode), auto_reset, `/av_td3/<role>/reset_episode`, the episode_end
message and the progress log line. A subclass owns its world and fills in the hooks.
"""
from __future__ import annotations

import time
from dataclasses import replace

from carla_msgs.msg import CarlaEgoVehicleControl
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from av_td3_ros.nodes.bridge_messages import BRIDGE_QOS, VehicleTopics, time_msg
from av_td3_ros.nodes.node_main import guard_callback
from av_td3_ros.task.episode_end import EpisodeEndMessage, format_episode_end


class EpisodeBridge(Node):
    """A bridge node's episode bookkeeping; subclasses call `_serve` and fill in the hooks."""

    topics: VehicleTopics

    def _serve(self, world, topics: VehicleTopics, role: str, delta_seconds: float, *,
               step_timeout: float, auto_reset: bool, synchronous_mode: bool = True,
               publish_rate: float = 0.0):
        """Subscribe to commands, offer reset_episode, start the tick timer and episode 0.

        `world` is closed with the node; `delta_seconds` is the sim time of one tick.
        """
        self._world = world
        self.topics = topics
        self._auto_reset = auto_reset
        self._synchronous = synchronous_mode
        self._delta_ns = round(delta_seconds * 1e9)
        self._frame = -1
        self._stamp_ns = 0
        self._stamp = time_msg(0)
        self._episode = -1
        self._control = (0.0, 0.0, 0.0)
        self._episode_wall_start = time.monotonic()
        self.create_subscription(CarlaEgoVehicleControl, f'/carla/{role}/vehicle_control_cmd',
                                 guard_callback(self, self._on_control), BRIDGE_QOS)
        self.create_service(Trigger, f'/av_td3/{role}/reset_episode',
                            guard_callback(self, self._on_reset))
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._watchdog = None
        if synchronous_mode and step_timeout > 0.0:
            self._watchdog = self.create_timer(step_timeout, guard_callback(self, self._tick),
                                               clock=steady)
        elif not synchronous_mode:
            self.create_timer(1.0 / publish_rate, guard_callback(self, self._tick),
                              clock=steady)
        self._start_episode()

    # Hooks of the world behind the bridge.

    @property
    def episode_running(self) -> bool:
        """Return True while an episode is being stepped (not ended, not failed to start)."""
        raise NotImplementedError

    def _command(self, msg: CarlaEgoVehicleControl) -> tuple[float, float, float]:
        """Return the (steer, throttle, brake) the world applies for a control message."""
        raise NotImplementedError

    def _reset_world(self, episode: int):
        """Start episode `episode`; return (state, route xy, route yaws), None on a fault."""
        raise NotImplementedError

    def _step_world(self):
        """Step the world once with `self._control`; return the state (it has `done`)."""
        raise NotImplementedError

    def _ending(self, state) -> tuple[EpisodeEndMessage, str]:
        """Return the episode_end content (no stamp) of a final state and a log detail."""
        raise NotImplementedError

    def _totals(self) -> tuple[int, float]:
        """Return the steps and the return of the latest episode."""
        raise NotImplementedError

    def _publish_state(self, state):
        """Publish every topic of one tick for `state`."""
        raise NotImplementedError

    # The shared bookkeeping.

    def _on_control(self, msg: CarlaEgoVehicleControl):
        """Store the command; in synchronous mode tick if it answers the latest frame."""
        control = self._command(msg)
        if not self._synchronous:
            self._control = control
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if stamp_ns != 0 and stamp_ns < self._stamp_ns:
            # An answer to an older frame (a duplicate or a late one): it must not tick the
            # world again, or one frame would advance the world twice.
            return
        self._control = control
        self._tick()

    def _on_reset(self, request, response):
        """Start a new episode now, whatever the state of the current one."""
        previous_steps, previous_return = self._totals()
        if self.episode_running:
            self._log_episode('reset_requested', previous_steps, previous_return)
        response.success = self._start_episode()
        response.message = (f'episode={self._episode};stamp_ns={self._stamp_ns};'
                            f'previous_return={previous_return:.3f};'
                            f'previous_steps={previous_steps}')
        return response

    def _tick(self):
        """Advance the world by one tick: a step, or the (re)start after an episode ended."""
        if not self.episode_running:
            if self._auto_reset:
                self._start_episode()
            return
        state = self._step_world()
        self._advance_clock()
        self._publish_state(state)
        if state.done:
            end, detail = self._ending(state)
            self.topics.end_episode(format_episode_end(replace(end, stamp_ns=self._stamp_ns)))
            self._log_episode(f'{end.kind}:{end.reason}{detail}', end.steps,
                              end.episode_return)

    def _start_episode(self) -> bool:
        """Reset the world for the next episode and publish its first tick; False on a fault."""
        self._episode += 1
        started = self._reset_world(self._episode)
        if started is None:
            return False
        state, route_xy, route_yaws = started
        self._control = (0.0, 0.0, 0.0)
        self._episode_wall_start = time.monotonic()
        self._advance_clock()
        self.topics.new_episode(self._stamp, self._episode, route_xy, route_yaws)
        self._publish_state(state)
        return True

    def _advance_clock(self):
        """Count one world tick and move sim time on by one tick."""
        self._frame += 1
        self._stamp_ns = self._frame * self._delta_ns
        self._stamp = time_msg(self._stamp_ns)
        if self._watchdog is not None:
            # A tick restarts the wait for the next command.
            self._watchdog.reset()

    def _log_episode(self, how: str, steps: int, episode_return: float):
        """Log the progress line of one finished episode."""
        wall = max(time.monotonic() - self._episode_wall_start, 1e-9)
        self.get_logger().info(
            f'episode {self._episode} {how}: steps {steps}, return {episode_return:.1f}, '
            f'sim time {self._stamp_ns / 1e9:.2f} s, {steps / wall:.1f} steps/s')

    def destroy_node(self):
        """Close the world, then destroy the node."""
        self._world.close()
        return super().destroy_node()
