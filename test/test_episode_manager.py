# Test the episode manager's decisions (pure: no ROS): reset sequence, ends, retries.
import pytest
from helpers import straight_route

from av_td3_ros.task.episode_label import EpisodeLabel, parse_episode_label
from av_td3_ros.task.episode_rules import (
    EndEpisode,
    EpisodeManager,
    EpisodeManagerConfig,
    MapPose,
    SendGoal,
    StartEpisode,
    Teleport,
    poses_from_flat,
)

A = MapPose(0.0, 0.0, 0.5, 0.0)
B = MapPose(100.0, -50.0, 0.5, 90.0)
S = 1_000_000_000  # ns per s


def started(manager, spawn, goal, stamp_ns, now=0.0):
    """Drive a reset through teleport, confirmation, route and first frame."""
    assert manager.on_odometry(stamp_ns, spawn.x + 0.5, spawn.y, 0.0, now) == [SendGoal(goal)]
    assert manager.on_route(straight_route(spawn, goal), now) == []
    (start,) = manager.on_frame(stamp_ns, now)
    return start


def test_reset_sequence_starts_an_episode_at_the_first_frame_after_the_teleport():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A, B)))
    assert manager.request_reset(now=0.0) == [Teleport(A)]
    assert manager.request_reset(now=0.1) == []  # already resetting
    # Odometry from before the teleport (car elsewhere), an old route, an old frame: wait.
    assert manager.on_odometry(5 * S, 40.0, 0.0, 3.0, 0.2) == []
    assert manager.on_route(straight_route(B, A), 0.2) == []
    assert manager.on_frame(5 * S, 0.2) == []
    # Odometry at the spawn point confirms; the goal (next spawn point) is sent.
    assert manager.on_odometry(6 * S, 0.3, -0.2, 0.0, 0.3) == [SendGoal(B)]
    # A route planned from the old position is not the one; one starting here is.
    assert manager.on_route(straight_route(MapPose(40.0, 0.0), B), 0.4) == []
    assert manager.on_frame(6 * S, 0.4) == []
    assert manager.on_route(straight_route(A, B), 0.5) == []
    assert manager.on_frame(5 * S, 0.5) == []  # older than the confirming odometry
    assert manager.on_frame(6 * S, 0.5) == [StartEpisode(1, 6 * S, 0, EpisodeLabel('1'))]
    assert manager.state == 'running'


def test_a_route_re_planned_to_the_old_goal_is_not_the_new_episode_s():
    # The waypoint publisher re-plans to its old goal when it sees the car jump; only the
    # route to the goal just sent counts (else the episode would end at once as completed).
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A, B)))
    manager.request_reset(0.0)
    started(manager, A, B, 1 * S)
    manager.request_reset(1.0)  # to B, goal A
    assert manager.on_odometry(2 * S, B.x, B.y, 0.0, 1.1) == [SendGoal(A)]
    assert manager.on_route(straight_route(B, B, points=2), 1.2) == []  # to the old goal B
    assert manager.on_frame(2 * S, 1.2) == []
    assert manager.on_route(straight_route(B, A), 1.3) == []
    assert manager.on_frame(2 * S, 1.3) == [StartEpisode(2, 2 * S, 1, EpisodeLabel('2'))]


def test_route_completion_ends_the_episode_and_resets_to_the_next_spawn_point():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A, B), goal_tolerance=5.0))
    manager.request_reset(0.0)
    started(manager, A, B, 1 * S)
    for k in range(2, 5):
        assert manager.on_frame(k * S, 1.0) == []
        assert manager.on_odometry(k * S, 20.0 * k, -10.0 * k, 8.0, 1.0) == []
    end, teleport = manager.on_odometry(5 * S, B.x - 3.0, B.y, 8.0, 2.0)
    assert end == EndEpisode('terminated', 'route_completed', 4, 5 * S)
    assert end.text() == f'terminated:route_completed;steps=4;stamp_ns={5 * S}'
    assert teleport == Teleport(B)
    # The next episode goes from B back to A (goals wrap around).
    assert started(manager, B, A, 7 * S).number == 2


def test_stuck_and_time_limit_truncate():
    config = EpisodeManagerConfig(spawn_points=(A, B), stuck_speed=0.5, stuck_time=3.0,
                                  episode_timeout=10.0)
    manager = EpisodeManager(config)
    manager.request_reset(0.0)
    started(manager, A, B, 10 * S)
    assert manager.on_odometry(11 * S, 1.0, 0.0, 0.1, 1.0) == []
    assert manager.on_odometry(12 * S, 1.0, 0.0, 2.0, 1.0) == []  # moving again: clock resets
    assert manager.on_odometry(13 * S, 1.0, 0.0, 0.1, 1.0) == []
    assert manager.on_odometry(15 * S, 1.0, 0.0, 0.1, 1.0) == []
    end, _ = manager.on_odometry(16 * S, 1.0, 0.0, 0.1, 1.0)
    assert (end.kind, end.reason) == ('truncated', 'stuck')

    started(manager, B, A, 20 * S)
    assert manager.on_odometry(29 * S, 60.0, -20.0, 5.0, 2.0) == []
    end, _ = manager.on_odometry(30 * S, 60.0, -20.0, 5.0, 2.0)
    assert (end.kind, end.reason) == ('truncated', 'time_limit')


def test_a_reset_that_does_not_complete_is_retried_on_the_steady_clock():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A,), reset_timeout=5.0))
    assert manager.request_reset(100.0) == [Teleport(A)]
    assert manager.on_timer(104.0) == []
    assert manager.on_timer(105.5) == [Teleport(A)]  # the teleport was lost: send it again
    assert manager.on_odometry(1 * S, 0.0, 0.0, 0.0, 106.0) == []  # no goal known yet
    assert manager.on_timer(110.0) == []
    assert manager.on_timer(111.5) == [Teleport(A)]  # no route came: start over


def test_one_spawn_point_asks_again_for_the_last_route_goal():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A,)))
    goal = MapPose(80.0, 0.0)
    assert manager.on_route(straight_route(A, goal), 0.0) == []  # the publisher's first route
    manager.request_reset(0.0)
    assert manager.on_odometry(1 * S, 0.0, 0.0, 0.0, 0.1) == [SendGoal(MapPose(80.0, 0.0))]


def test_trainer_reset_during_an_episode_starts_the_next_one_without_an_end():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A, B)))
    manager.request_reset(0.0)
    started(manager, A, B, 1 * S)
    assert manager.request_reset(1.0) == [Teleport(B)]  # e.g. the trainer saw a collision
    assert manager.episode == 1


def test_random_order_is_seeded_and_goals_follow_their_spawn_point():
    points = tuple(MapPose(float(10 * i), 0.0) for i in range(5))
    goals = tuple(MapPose(float(10 * i), 50.0) for i in range(5))

    def sequence(seed):
        manager = EpisodeManager(EpisodeManagerConfig(spawn_points=points, goals=goals,
                                                      order='random', seed=seed))
        picks = []
        for k in range(8):
            (teleport,) = manager.request_reset(float(k))
            spawn = teleport.pose
            (send_goal,) = manager.on_odometry(k * S, spawn.x, spawn.y, 0.0, float(k))
            assert send_goal.pose == goals[points.index(spawn)]
            picks.append(points.index(spawn))
            manager.state = 'idle'
        return picks

    assert sequence(3) == sequence(3)
    assert len(set(sequence(3))) > 1


@pytest.mark.parametrize('kwargs, message', [
    ({'spawn_points': ()}, 'no spawn points'),
    ({'spawn_points': (A, B), 'goals': (A,)}, '1 goals for 2 spawn points'),
    ({'spawn_points': (A,), 'order': 'shuffled'}, 'order must be'),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeManagerConfig(**kwargs)


def test_poses_from_flat():
    assert poses_from_flat([1, 2, 3, 90, 4, 5, 6, 0]) == (MapPose(1, 2, 3, 90),
                                                          MapPose(4, 5, 6, 0))
    with pytest.raises(ValueError, match='groups of 4'):
        poses_from_flat([1, 2, 3])
    with pytest.raises(ValueError, match='finite'):
        poses_from_flat([1, 2, 3, float('nan')])


C = MapPose(-80.0, 30.0, 0.5, 180.0)


# Test if evaluations come every eval_every training episodes, from the first spawn points in
# order (so their scores compare), without moving the training order on.
def test_evaluations_interleave_with_training_on_fixed_spawn_points():
    manager = EpisodeManager(EpisodeManagerConfig(spawn_points=(A, B, C), eval_every=2,
                                                  eval_episodes=2))
    labels, spawns = [], []
    for k in range(9):
        (teleport,) = manager.request_reset(float(k))
        spawns.append(teleport.pose)
        labels.append(started(manager, teleport.pose, manager.goal, (k + 1) * S).label.text())
        manager.state = 'ended'  # as after an episode end
    assert labels == ['1', '2', '3 eval 1/2', '4 eval 2/2', '5', '6', '7 eval 1/2',
                      '8 eval 2/2', '9']
    assert spawns == [A, B, A, B, C, A, A, B, B]
    assert [parse_episode_label(text).evaluating for text in labels] == [
        False, False, True, True, False, False, True, True, False]
    assert parse_episode_label('8 eval 2/2').closes_evaluation


@pytest.mark.parametrize('text', ['', '7', '7 eval', '7 eval 3/2', '7 eval 0/2', '7 eval x/2',
                                  'eval 1/2', '7 evaluation 1/2', '7 eval 1/2 more'])
def test_anything_but_a_well_formed_evaluation_label_is_training(text):
    label = parse_episode_label(text)
    assert not label.evaluating and label.text() == text


def test_evaluation_settings_are_checked():
    with pytest.raises(ValueError, match='eval_episodes'):
        EpisodeManagerConfig(spawn_points=(A,), eval_every=2, eval_episodes=0)
