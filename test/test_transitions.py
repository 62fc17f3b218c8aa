# Test pairing of frames, commands and odometry into transitions, and the reward terms.
import math

import numpy as np
import pytest
from helpers import straight_route

from av_td3_ros.policy.features import Pose2D
from av_td3_ros.task.reward import (
    RewardConfig,
    RewardFunction,
    StepEvents,
    VehicleState,
    comfort,
    efficiency,
    lane_keeping,
    progress,
    safety,
)
from av_td3_ros.task.transitions import (
    EpisodeConfig,
    EpisodeEnd,
    EpisodeStart,
    Transition,
    TransitionAssembler,
)

ROUTE = straight_route(length=398.0)  # 200 points 2 m apart along +x
MS = 1_000_000


def frame(k):
    return np.full((84, 84), k % 256, np.uint8)


def feed(assembler, k, x=None, speed=5.0, action=True, lateral=0.0):
    """Give the assembler everything about frame k (stamp k*50 ms)."""
    stamp = k * 50 * MS
    x = k * 0.25 if x is None else x
    assembler.on_odometry(stamp, Pose2D(x, lateral, 0.0), speed, 0.0)
    assembler.on_frame(stamp, frame(k))
    if action:
        assembler.on_control(stamp, np.array([0.01 * k, 0.5], np.float32))
    return stamp


def transitions(output):
    return [item for item in output if isinstance(item, Transition)]


def kinds(output):
    names = {EpisodeStart: 'start', Transition: 'transition', EpisodeEnd: 'episode_end'}
    return [names[type(item)] for item in output]


def make(**episode):
    # No event window unless a test asks for one: these tests check pairing and episode
    # bookkeeping step by step; the window's own tests are below.
    episode.setdefault('event_window', 0.0)
    assembler = TransitionAssembler(episode=EpisodeConfig(**episode))
    assembler.on_route(ROUTE)
    return assembler


def test_pairs_each_frame_with_its_own_command():
    assembler = make()
    for k in range(1, 7):
        feed(assembler, k)
    output = assembler.pop_output()
    assert isinstance(output[0], EpisodeStart) and output[0].frame[0, 0] == 1
    steps = transitions(output)
    assert len(steps) == 4  # the step into frame 6 is held until the next frame
    for k, step in zip(range(2, 6), steps, strict=True):
        # The transition into frame k carries the action taken on frame k - 1.
        assert step.next_frame[0, 0] == k
        assert step.action[0] == pytest.approx(0.01 * (k - 1))
        assert not step.terminated and not step.truncated
        assert math.isfinite(step.reward)


def test_late_commands_are_paired_by_stamp_not_arrival_order():
    assembler = make()
    stamps = [feed(assembler, k, action=False) for k in range(1, 5)]
    for k, stamp in reversed(list(enumerate(stamps, start=1))):
        assembler.on_control(stamp, np.array([0.01 * k, 0.5], np.float32))
    steps = transitions(assembler.pop_output())
    assert [round(float(s.action[0]), 2) for s in steps] == [0.01, 0.02]


def test_frame_without_command_ends_its_step_and_the_chain_restarts():
    assembler = make(max_pending_frames=2)
    feed(assembler, 1)
    feed(assembler, 2)
    feed(assembler, 3, action=False)  # this command never arrives
    for k in range(4, 8):
        feed(assembler, k)
    output = assembler.pop_output()
    assert assembler.stats.dropped_unpaired == 1
    assert kinds(output).count('start') == 2
    # The step into frame 3 needs only frame 2's action: it is kept. None starts from frame 3
    # (its action is unknown), so nothing is mis-paired: the chain restarts at frame 4.
    next_frames = [int(s.next_frame[0, 0]) for s in transitions(output)]
    assert next_frames == [2, 3, 5, 6]
    assert [round(float(s.action[0]), 2) for s in transitions(output)] == [
        0.01, 0.02, 0.04, 0.05]


def test_a_collision_in_the_step_into_a_frame_without_command_is_terminal():
    assembler = make(max_pending_frames=2)
    feed(assembler, 1)
    feed(assembler, 2)
    assembler.on_event(feed(assembler, 3, action=False) - MS, 'collision')
    for k in range(4, 8):
        feed(assembler, k)
    output = assembler.pop_output()
    (last,) = [s for s in transitions(output) if s.terminated]
    assert int(last.next_frame[0, 0]) == 3 and last.end_reason == 'collision'
    end = output[-1]
    assert isinstance(end, EpisodeEnd) and end.reason == 'collision' and end.needs_reset


@pytest.mark.parametrize('missing', [[3], [2, 3]])
def test_a_collision_between_chains_still_ends_the_episode(missing):
    # The collision falls after the last frame a transition can reach and before the next
    # chain starts: no transition carries it, but the episode ends and asks for a reset.
    assembler = make(max_pending_frames=2)
    for k in range(1, 8):
        stamp = feed(assembler, k, action=k not in missing)
        if k == 3:
            assembler.on_event(stamp + MS, 'collision')
    output = assembler.pop_output()
    assert not any(s.terminated for s in transitions(output))
    assert [(item.reason, item.needs_reset) for item in output
            if isinstance(item, EpisodeEnd)] == [('collision', True)]
    assert assembler.stats.gap_collisions == 1 and assembler.ended
    assert max(int(s.next_frame[0, 0]) for s in transitions(output)) <= 3


def test_a_frame_answered_by_the_driver_but_never_received_breaks_the_chain():
    assembler = make()
    for k in range(1, 8):
        stamp = k * 50 * MS
        assembler.on_odometry(stamp, Pose2D(k * 0.25, 0.0, 0.0), 5.0, 0.0)
        if k != 4:  # frame 4 was lost on the way here; its command was not
            assembler.on_frame(stamp, frame(k))
        assembler.on_control(stamp, np.array([0.01 * k, 0.5], np.float32))
    output = assembler.pop_output()
    assert assembler.stats.missed_frames == 1
    # 3 -> 5 would carry frame 3's action over two steps: no such transition exists.
    steps = transitions(output)
    assert [int(s.next_frame[0, 0]) for s in steps] == [2, 3, 6]
    assert [round(float(s.action[0]), 2) for s in steps] == [0.01, 0.02, 0.05]
    assert kinds(output).count('start') == 2


def test_a_collision_in_a_lost_frame_s_step_still_ends_the_episode():
    assembler = make()
    for k in range(1, 8):
        stamp = k * 50 * MS
        assembler.on_odometry(stamp, Pose2D(k * 0.25, 0.0, 0.0), 5.0, 0.0)
        if k != 4:
            assembler.on_frame(stamp, frame(k))
        else:
            assembler.on_event(stamp, 'collision')
        assembler.on_control(stamp, np.array([0.01 * k, 0.5], np.float32))
    output = assembler.pop_output()
    assert [(item.reason, item.needs_reset) for item in output
            if isinstance(item, EpisodeEnd)] == [('collision', True)]
    assert not any(s.terminated for s in transitions(output))
    assert assembler.stats.gap_collisions == 1


def test_frames_without_odometry_are_dropped():
    assembler = make()
    assembler.on_frame(10 * MS, frame(0))
    assert assembler.stats.dropped_no_odometry == 1
    assert assembler.pop_output() == []


def test_collision_terminates_with_safety_penalty():
    assembler = make()
    feed(assembler, 1)
    feed(assembler, 2)
    assembler.on_event(3 * 50 * MS - 1, 'collision')
    feed(assembler, 3, action=False)  # a terminal frame needs no command of its own
    output = assembler.pop_output()
    last = transitions(output)[-1]
    assert last.terminated and not last.truncated and last.end_reason == 'collision'
    assert last.terms['safety'] == pytest.approx(-100.0)  # at 5 m/s
    assert isinstance(output[-1], EpisodeEnd)
    assert assembler.ended
    feed(assembler, 4)
    assert assembler.pop_output() == []


def test_step_limit_truncates_and_lateral_deviation_terminates():
    assembler = make(max_steps=3)
    for k in range(1, 5):
        feed(assembler, k)
    steps = transitions(assembler.pop_output())
    assert len(steps) == 3
    assert steps[-1].truncated and not steps[-1].terminated
    assembler.on_episode_start(10 * 50 * MS)
    feed(assembler, 10)
    feed(assembler, 11, lateral=3.0)
    (step,) = transitions(assembler.pop_output())
    assert step.terminated and step.end_reason == 'lateral deviation'


def test_simulator_episode_end_marks_the_newest_frame():
    assembler = make()
    feed(assembler, 1)
    feed(assembler, 2, action=False)
    assembler.on_episode_end('truncated', 'time_limit')
    output = assembler.pop_output()
    (step,) = transitions(output)
    assert step.truncated and not step.terminated
    assert 'time_limit' in step.end_reason


def test_frames_from_before_the_episode_start_are_stale():
    assembler = make()
    assembler.on_episode_start(100 * 50 * MS)
    feed(assembler, 99)
    assert assembler.stats.dropped_stale == 1
    feed(assembler, 100)
    feed(assembler, 101)
    assert isinstance(assembler.pop_output()[0], EpisodeStart)


def state(**values):
    defaults = dict(time=0.0, speed=5.0, yaw_rate=0.0, lateral_deviation=0.0,
                    heading_error=0.0, distance_to_goal=100.0, segment=0)
    defaults.update(values)
    return VehicleState(**defaults)


def test_reward_terms_follow_av_td3_system():
    config = RewardConfig()
    assert efficiency(state(speed=8.33), config) == pytest.approx(1.0)
    assert efficiency(state(speed=4.165), config) == pytest.approx(0.5 + 0.15)
    assert efficiency(state(speed=0.2), config) == pytest.approx(0.2 / 8.33)
    assert lane_keeping(state(), True, config) == -1.0
    assert lane_keeping(state(speed=0.05), False, config) == 0.0
    assert lane_keeping(state(speed=3.0), False, config) == pytest.approx(0.5)
    assert comfort(0.0, 0.0, config) == pytest.approx(0.3)
    assert comfort(10.0, 0.0, config) == pytest.approx(-0.3)
    assert safety(state(speed=1.0), StepEvents(collision=True), config) == -5.0
    assert safety(state(speed=3.0), StepEvents(collision=True), config) == -25.0
    assert safety(state(lateral_deviation=3.0), StepEvents(lane_invasion=True),
                  config) == -30.0
    assert progress(state(distance_to_goal=10.0, segment=1),
                    state(distance_to_goal=8.0, segment=2), StepEvents(),
                    config) == pytest.approx(2.0)
    assert progress(state(), state(distance_to_goal=0.0), StepEvents(goal_reached=True),
                    config) == 110.0


def test_reward_total_is_the_weighted_sum():
    reward = RewardFunction()
    total, terms = reward(state(time=0.0), state(time=0.05, distance_to_goal=99.75),
                          StepEvents())
    weights = dict(efficiency=2.0, lane_keeping=2.0, comfort=1.0, safety=1.0, progress=3.0)
    assert total == pytest.approx(sum(weights[k] * v for k, v in terms.items()))


def test_episode_start_overtaken_by_the_new_first_frame_never_spans_the_reset():
    assembler = make()
    for k in range(1, 4):
        feed(assembler, k)
    feed(assembler, 4, x=100.0)  # first frame of the next episode, before episode_start
    assembler.on_episode_start(4 * 50 * MS)
    feed(assembler, 5, x=100.25)
    feed(assembler, 6, x=100.5)
    output = assembler.pop_output()
    assert kinds(output) == ['start', 'transition', 'transition', 'episode_end', 'start',
                             'transition']
    assert output[3].reason == 'reset' and output[3].needs_reset is False  # no request
    assert output[3].steps == 2  # the old episode keeps only its own two steps
    assert output[4].frame[0, 0] == 4  # frame 4 starts the new episode
    assert [int(t.next_frame[0, 0]) for t in transitions(output)] == [2, 3, 5]


def test_frames_after_an_end_wait_for_the_next_episode_start():
    assembler = make()
    feed(assembler, 1)
    feed(assembler, 2)
    assembler.on_event(3 * 50 * MS, 'collision')
    feed(assembler, 3)
    assert assembler.ended
    feed(assembler, 10)  # arrives before the episode_start for stamp 10
    assembler.on_episode_start(10 * 50 * MS)
    feed(assembler, 11)
    feed(assembler, 12)
    output = assembler.pop_output()
    end = next(item for item in output if isinstance(item, EpisodeEnd))
    assert end.reason == 'collision' and end.needs_reset is True  # the trainer must reset
    starts = [item for item in output if isinstance(item, EpisodeStart)]
    assert starts[-1].frame[0, 0] == 10


def test_finish_releases_the_held_step():
    assembler = make()
    for k in range(1, 4):
        feed(assembler, k)
    assert len(transitions(assembler.pop_output())) == 1  # the step into frame 3 is held
    assert [int(t.next_frame[0, 0]) for t in transitions(assembler.finish())] == [3]


# --- late events: the event window -------------------------------------------------------------

WINDOW = 0.2  # s: four 50 ms frames


def frame_messages(k, action=True):
    """Return frame k's messages as (kind, stamp, payload) in the order the bridge sends them."""
    stamp = k * 50 * MS
    messages = [('odometry', stamp, Pose2D(k * 0.25, 0.0, 0.0)), ('frame', stamp, frame(k))]
    if action:
        messages.append(('control', stamp, np.array([0.01 * k, 0.5], np.float32)))
    return messages


def deliver(assembler, message):
    kind, stamp, payload = message
    if kind == 'odometry':
        assembler.on_odometry(stamp, payload, 5.0, 0.0)
    elif kind == 'frame':
        assembler.on_frame(stamp, payload)
    elif kind == 'control':
        assembler.on_control(stamp, payload)
    else:
        assembler.on_event(stamp, kind)


def event_for(k, kind):
    """Return an event stamped inside step k's interval (after frame k-1, at most frame k)."""
    return (kind, k * 50 * MS - 7 * MS, None)


# Where frame 5's event is delivered relative to frame 5's own messages.
TIMINGS = {'before its frame': 0, 'between frame and command': 2, 'right after': 3,
           'after two more frames': 9, 'after three more frames': 12}


@pytest.mark.parametrize('timing', TIMINGS)
def test_a_late_collision_within_the_window_still_terminates_and_resets(timing):
    assembler = make(event_window=WINDOW)
    messages = [m for k in range(1, 12) for m in frame_messages(k)]
    at = [i for i, m in enumerate(messages) if m[0] == 'odometry' and m[1] == 5 * 50 * MS][0]
    messages.insert(at + TIMINGS[timing], event_for(5, 'collision'))
    for message in messages:
        deliver(assembler, message)
    output = assembler.pop_output()
    steps = transitions(output)
    assert [int(s.next_frame[0, 0]) for s in steps] == [2, 3, 4, 5]
    assert steps[-1].terminated and steps[-1].end_reason == 'collision'
    assert steps[-1].terms['safety'] == pytest.approx(-100.0)
    assert not any(s.terminated for s in steps[:-1])
    end = output[-1]
    assert isinstance(end, EpisodeEnd) and end.reason == 'collision' and end.needs_reset
    assert assembler.ended and assembler.stats.late_events == 0


@pytest.mark.parametrize('timing', TIMINGS)
def test_a_late_lane_invasion_within_the_window_is_penalised_on_its_step(timing):
    assembler = make(event_window=WINDOW)
    messages = [m for k in range(1, 12) for m in frame_messages(k)]
    at = [i for i, m in enumerate(messages) if m[0] == 'odometry' and m[1] == 5 * 50 * MS][0]
    messages.insert(at + TIMINGS[timing], event_for(5, 'lane_invasion'))
    for message in messages:
        deliver(assembler, message)
    steps = {int(s.next_frame[0, 0]): s for s in transitions(assembler.finish())}
    assert sorted(steps) == list(range(2, 12))
    assert [k for k, s in steps.items() if s.terms['lane_keeping'] == -1.0] == [5]
    assert not any(s.terminated for s in steps.values())


def test_an_event_later_than_the_window_is_counted_not_applied():
    assembler = make(event_window=WINDOW)
    for k in range(1, 12):
        for message in frame_messages(k):
            deliver(assembler, message)
    deliver(assembler, event_for(5, 'collision'))  # frame 10 (5 + 0.25 s) already came
    assert assembler.stats.late_events == 1
    assert not any(s.terminated for s in transitions(assembler.finish()))


@pytest.mark.parametrize('seed', range(25))
def test_events_in_random_delivery_order_label_the_right_steps(seed):
    # Every message (odometry, frame, command, event) is delayed by a random 0-150 ms, less
    # than the window, so topics interleave in any order; labels must not depend on it.
    rng = np.random.default_rng(seed)
    frames = 30
    collision = int(rng.integers(6, frames - 5))
    invasions = sorted(set(rng.integers(2, collision, size=3).tolist()))
    messages = [m for k in range(1, frames + 1) for m in frame_messages(k)]
    messages += [event_for(k, 'lane_invasion') for k in invasions]
    messages.append(event_for(collision, 'collision'))
    delays = rng.uniform(0, 0.15e9, size=len(messages))
    order = np.argsort([m[1] + d for m, d in zip(messages, delays, strict=True)], kind='stable')
    assembler = make(event_window=WINDOW)
    # A frame is only kept if some odometry came before it (the first one could be dropped).
    deliver(assembler, ('odometry', 0, Pose2D(0.0, 0.0, 0.0)))
    for index in order:
        deliver(assembler, messages[index])
    output = assembler.pop_output()
    steps = transitions(output)
    assert [int(s.next_frame[0, 0]) for s in steps] == list(range(2, collision + 1))
    assert [s.terminated for s in steps] == [False] * (collision - 2) + [True]
    assert steps[-1].end_reason == 'collision'
    penalised = [int(s.next_frame[0, 0]) for s in steps if s.terms['lane_keeping'] == -1.0]
    assert penalised == [k for k in invasions if k != collision]
    assert isinstance(output[-1], EpisodeEnd) and output[-1].needs_reset is True
    assert assembler.stats.late_events == 0 and assembler.stats.dropped_unpaired == 0


def test_the_window_holds_steps_until_a_later_frame_or_a_quiet_stream():
    assembler = make(event_window=WINDOW)
    for k in range(1, 4):
        for message in frame_messages(k):
            deliver(assembler, message)
    assert assembler.pop_output() == []  # frame 1 waits for a frame stamped 0.2 s later
    for message in frame_messages(6):
        deliver(assembler, message)
    # Frames 1 and 2 are decided; the step into 2 is held until the next one, as always.
    assert kinds(assembler.pop_output()) == ['start']
    assembler.decide_pending()  # the stream went quiet: decide without the window
    assert [int(s.next_frame[0, 0]) for s in transitions(assembler.pop_output())] == [2, 3]
    assert [int(s.next_frame[0, 0]) for s in transitions(assembler.finish())] == [6]


def test_a_simulator_end_decides_the_waiting_frames():
    assembler = make(event_window=WINDOW)
    for k in range(1, 4):
        for message in frame_messages(k):
            deliver(assembler, message)
    assembler.on_episode_end('truncated', 'time_limit')
    steps = transitions(assembler.pop_output())
    assert [int(s.next_frame[0, 0]) for s in steps] == [2, 3]
    assert steps[-1].truncated and 'time_limit' in steps[-1].end_reason


def test_old_episode_frames_waiting_for_events_are_kept_at_an_episode_start():
    assembler = make(event_window=WINDOW)
    for k in range(1, 5):
        for message in frame_messages(k):
            deliver(assembler, message)
    assembler.on_episode_start(100 * 50 * MS)
    for k in range(100, 103):
        for message in frame_messages(k):
            deliver(assembler, message)
    output = assembler.finish()
    assert kinds(output) == ['start', 'transition', 'transition', 'transition',
                             'episode_end', 'start', 'transition', 'transition']
    assert assembler.stats.dropped_stale == 0


def test_a_frame_older_than_a_decided_one_is_dropped_as_stale():
    assembler = make()
    for k in (1, 2, 3):
        feed(assembler, k)
    feed(assembler, 2)  # a duplicate/late frame: its transition would run backwards
    assert assembler.stats.dropped_stale == 1


# --- bad routes and odometry ---------------------------------------------------------------

BAD_ROUTES = {
    'two identical poses': np.array([[5.0, 5.0], [5.0, 5.0]]),
    'nan in the middle': np.array([[0.0, 0.0], [np.nan, 1.0], [4.0, 0.0]]),
    'inf': np.array([[0.0, 0.0], [np.inf, 0.0]]),
    'one point': np.array([[0.0, 0.0]]),
    'empty': np.empty((0, 2)),
    'huge coordinates': np.array([[0.0, 0.0], [1e300, 0.0]]),
}


@pytest.mark.parametrize('name', BAD_ROUTES)
def test_an_unusable_route_counts_as_no_route(name):
    assembler = make()
    feed(assembler, 1)
    feed(assembler, 2)
    problem = assembler.on_route(BAD_ROUTES[name])
    assert problem
    feed(assembler, 3)  # no route now: dropped, the chain restarts
    assert assembler.route is None and assembler.stats.dropped_no_odometry == 1
    assert assembler.stats.bad_routes == 1
    assert assembler.on_route(ROUTE) is None
    for k in range(4, 8):
        feed(assembler, k)
    output = assembler.finish()
    assert [int(s.next_frame[0, 0]) for s in transitions(output)] == [2, 5, 6, 7]


@pytest.mark.parametrize('pose, speed', [
    (Pose2D(np.nan, 0.0, 0.0), 5.0), (Pose2D(0.0, np.inf, 0.0), 5.0),
    (Pose2D(0.0, 0.0, np.nan), 5.0), (Pose2D(0.0, 0.0, 0.0), np.nan),
    (Pose2D(1e300, 0.0, 0.0), 5.0), (Pose2D(0.0, 0.0, 0.0), 1e9)])
def test_unusable_odometry_is_ignored(pose, speed):
    assembler = make()
    feed(assembler, 1)
    assert assembler.on_odometry(2 * 50 * MS, pose, speed, 0.0)
    assembler.on_frame(2 * 50 * MS, frame(2))  # the newest usable odometry (frame 1's) is used
    assembler.on_control(2 * 50 * MS, np.array([0.0, 0.5], np.float32))
    assert assembler.stats.bad_odometry == 1
    (step,) = transitions(assembler.finish())
    assert np.isfinite(step.next_vec).all() and np.isfinite(step.reward)


def test_random_routes_and_odometry_never_raise_and_never_give_non_finite_output():
    rng = np.random.default_rng(11)
    specials = [np.nan, np.inf, -np.inf, 0.0, 1e308, -1e-320, 5.0]
    assembler = make()
    stored = 0
    for k in range(1, 600):
        if rng.random() < 0.1:
            points = rng.normal(0, 50, size=(int(rng.integers(0, 6)), 2))
            if points.size and rng.random() < 0.5:
                points.flat[rng.integers(points.size)] = rng.choice(specials)
            if len(points) > 1 and rng.random() < 0.3:
                points[:] = points[0]  # all points identical
            assembler.on_route(points if rng.random() < 0.8 else ROUTE)
        values = [k * 0.25, 0.0, 0.0, 5.0]
        if rng.random() < 0.2:
            values[rng.integers(4)] = rng.choice(specials)
        stamp = k * 50 * MS
        assembler.on_odometry(stamp, Pose2D(*values[:3]), values[3],
                              float(rng.choice(specials)))
        assembler.on_frame(stamp, frame(k))
        assembler.on_control(stamp, np.array([0.0, 0.5], np.float32))
        for item in assembler.pop_output():
            if isinstance(item, Transition):
                stored += 1
                assert np.isfinite(item.next_vec).all() and np.isfinite(item.reward)
            elif isinstance(item, EpisodeStart):
                assert np.isfinite(item.vec).all()
            if isinstance(item, EpisodeEnd):
                assembler.on_episode_start((k + 1) * 50 * MS)
    assert stored > 50  # good stretches still become transitions


def test_a_non_finite_command_leaves_its_frame_unpaired():
    assembler = make(max_pending_frames=1)
    feed(assembler, 1)
    feed(assembler, 2, action=False)
    assert assembler.on_control(2 * 50 * MS, np.array([np.nan, 0.5], np.float32))
    for k in range(3, 6):
        feed(assembler, k)
    assert assembler.stats.bad_commands == 1 and assembler.stats.dropped_unpaired == 1
    assert all(np.isfinite(s.action).all() for s in transitions(assembler.finish()))


def test_a_long_window_keeps_what_its_waiting_frames_need():
    # 10 odometry samples and a stray command per frame: far more than the 64 samples and
    # 256 commands kept in general, while 120 frames wait out a 6 s window.
    assembler = make(event_window=6.0)
    for k in range(1, 121):
        stamp = k * 50 * MS
        for j in range(10):
            assembler.on_odometry(stamp - j * 5 * MS, Pose2D(k * 0.25, 0.0, 0.0), 5.0, 0.0)
        # A command for no frame (a watchdog brake stamped by the wall clock under sim time;
        # one stamped between two frames would mean a lost frame and break the chain).
        assembler.on_control(stamp + 10**15, np.array([0.0, 0.0], np.float32))
        assembler.on_frame(stamp, frame(k))
        assembler.on_control(stamp, np.array([0.01, 0.5], np.float32))
    assert assembler.pop_output() == []  # all still inside the window
    steps = transitions(assembler.finish())
    assert [int(s.next_frame[0, 0]) for s in steps] == list(range(2, 121))
    assert assembler.stats.dropped_unpaired == 0



# Test if an episode's end says how much of its route was driven and which events it had.
def test_an_episode_end_scores_route_completion_collisions_and_lane_invasions():
    assembler = make()
    for k in range(1, 6):
        if k in (3, 4):
            assembler.on_event(k * 50 * MS - 1, 'lane_invasion')
        feed(assembler, k, x=40.0 * k - 40.0)  # 160 m of the 398 m route in 4 steps
    assembler.on_event(6 * 50 * MS - 1, 'collision')
    feed(assembler, 6, x=199.0, action=False)
    end = assembler.pop_output()[-1]
    assert isinstance(end, EpisodeEnd) and end.reason == 'collision'
    assert end.route_completion == pytest.approx(199.0 / 398.0, abs=0.01)
    assert (end.collisions, end.lane_invasions) == (1, 2)
    # The next episode counts from zero; a completed route is 1.
    assembler.on_episode_start(20 * 50 * MS)
    feed(assembler, 20, x=0.0)
    feed(assembler, 21, x=397.5)
    end = assembler.pop_output()[-1]
    assert end.reason == 'route completed' and end.route_completion == 1.0
    assert (end.collisions, end.lane_invasions) == (0, 0)


# Test if a chain that breaks on a terminal frame without a command (the driver answered a
# frame this assembler never got) never yields a transition without an action.
def test_a_terminal_frame_without_command_after_a_missed_frame_starts_no_chain():
    assembler = make()
    feed(assembler, 1)
    feed(assembler, 2)
    assembler.on_control(3 * 50 * MS, np.array([0.0, 0.5], np.float32))  # frame 3 never came
    feed(assembler, 4, action=False, lateral=3.0)
    for k in range(5, 12):
        feed(assembler, k, lateral=3.0)
    output = assembler.finish()
    assert all(step.action is not None and step.action.shape == (2,)
               for step in transitions(output))


# Test if frames still waiting when the route turns unusable are dropped as frames without a
# route, not scored against no route (that raised, and ended train_offline).
def test_frames_waiting_when_the_route_turns_unusable_are_dropped():
    assembler = make(event_window=0.2)
    for k in range(1, 4):
        feed(assembler, k)
    assert assembler.on_route(np.array([[5.0, 0.0], [5.0, 0.0]])) is not None
    assembler.on_episode_end('terminated', 'route_completed')
    assembler.decide_pending()
    output = assembler.finish()
    assert all(step.action is not None for step in transitions(output))
    assert assembler.stats.dropped_no_odometry >= 1
    assembler.on_route(ROUTE)
    assembler.on_episode_start(10 * 50 * MS)
    for k in range(10, 14):
        feed(assembler, k)
    assert transitions(assembler.finish())
