# Test if the one episode_end codec round-trips and reads every form the system publishes.
from dataclasses import replace
from types import SimpleNamespace

import pytest

from av_td3_ros.nodes.sim_bridge import episode_end
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
