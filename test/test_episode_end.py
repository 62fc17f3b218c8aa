# Test if the one episode_end codec round-trips and reads every form the system publishes.
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from av_td3_ros.nodes import metadrive_bridge
from av_td3_ros.nodes.sim_bridge import episode_end
from av_td3_ros.sim.metadrive_results import RouteProgress
from av_td3_ros.task.episode_end import EpisodeEndMessage, format_episode_end, parse_episode_end
from av_td3_ros.task.episode_rules import EndEpisode


@pytest.mark.parametrize('text', [
    'terminated:lap_complete;return=903.412;steps=868;stamp_ns=43450000000',  # sim_bridge
    'truncated:time_limit;return=-12.500;steps=1000;stamp_ns=50000000000',
    'terminated:route_completed;steps=4;stamp_ns=5000000000',  # carla_episode_manager
    'truncated:stuck;steps=412;stamp_ns=20600000000;spawn=3',  # a field it does not know
    'truncated:time_limit',  # the head alone (README: CONVENTIONS format)
])
def test_text_round_trips(text):
    end = parse_episode_end(text)
    assert format_episode_end(end) == text
    assert parse_episode_end(format_episode_end(end)) == end


def test_fields_are_typed():
    end = parse_episode_end('terminated:lap_complete;return=123.4;steps=456')
    assert end == EpisodeEndMessage('terminated', 'lap_complete', episode_return=123.4,
                                    steps=456)
    assert end.terminated and not end.truncated
    end = parse_episode_end('truncated:time_limit')
    assert (end.kind, end.reason, end.episode_return, end.steps, end.stamp_ns) == (
        'truncated', 'time_limit', None, None, None)
    assert end.truncated and not end.terminated
    assert parse_episode_end('truncated:off track:far;flag').extra == (('flag', ''),)
    assert parse_episode_end('truncated:off track:far').reason == 'off track:far'


def test_a_bad_number_is_refused_but_the_head_always_reads():
    text = 'terminated:collision;steps=many'
    with pytest.raises(ValueError, match='steps'):
        parse_episode_end(text)
    head = parse_episode_end(text.split(';')[0])
    assert (head.kind, head.reason) == ('terminated', 'collision')


def test_the_writers_use_the_codec_unchanged():
    state = SimpleNamespace(terminated=True, truncated=False, reason='lap_complete',
                            episode_return=903.4116, steps=868)
    end = replace(episode_end(state), stamp_ns=43450000000)
    assert format_episode_end(end) == \
        'terminated:lap_complete;return=903.412;steps=868;stamp_ns=43450000000'
    assert EndEpisode('truncated', 'stuck', 412, 20600000000).text() == \
        'truncated:stuck;steps=412;stamp_ns=20600000000'


# Test if metadrive_bridge's episode_end carries MetaDrive's summed reward as return= and the
# route completion (the car's progress; 100 once it arrived) as route_completion=.
def test_metadrive_episode_end_carries_return_and_route_completion():
    progress = RouteProgress(np.stack([np.arange(11.0), np.zeros(11)], axis=1))
    progress.update(2.6, 0.4)
    crash = SimpleNamespace(end=('terminated', 'crash'), steps=31)
    end = replace(metadrive_bridge.episode_end(crash, -4.25, progress), stamp_ns=3100000000)
    assert format_episode_end(end) == ('terminated:crash;return=-4.250;steps=31;'
                                       'stamp_ns=3100000000;route_completion=30.000')
    arrived = SimpleNamespace(end=('terminated', 'arrived'), steps=80)
    end = parse_episode_end(format_episode_end(
        metadrive_bridge.episode_end(arrived, 61.5, progress)))
    assert (end.episode_return, dict(end.extra)) == (61.5, {'route_completion': '100.000'})
