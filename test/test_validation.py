# Test if the one validation helper names the field and the allowed values in every refusal.
from types import SimpleNamespace

import pytest

from av_td3_ros.validation import check_at_least, check_choice, check_range


def test_check_choice_names_the_field_the_choices_and_the_value():
    check_choice('mode', 'eval', ('eval', 'explore'))
    with pytest.raises(ValueError, match=r"mode must be one of \('eval', 'explore'\), got 'x'"):
        check_choice('mode', 'x', ('eval', 'explore'))


@pytest.mark.parametrize('value, kwargs, ok', [
    (0.0, {}, True), (1.0, {}, True), (1.0, {'high_open': True}, False),
    (0.0, {'low_open': True}, False), (0.5, {'low_open': True, 'high_open': True}, True),
    (float('nan'), {}, False), (-1e-9, {}, False)])
def test_check_range_bounds_open_and_closed(value, kwargs, ok):
    if ok:
        check_range('x', value, 0.0, 1.0, **kwargs)
    else:
        with pytest.raises(ValueError, match='x must be in'):
            check_range('x', value, 0.0, 1.0, **kwargs)


def test_check_range_without_a_high_bound_and_check_at_least_name_the_field():
    check_range('lr', 5.0, 0.0, low_open=True)
    with pytest.raises(ValueError, match=r'lr must be in \(0.0, inf\], got 0.0'):
        check_range('lr', 0.0, 0.0, low_open=True)
    config = SimpleNamespace(a=2, b=0)
    check_at_least(config, 0, 'a', 'b')
    with pytest.raises(ValueError, match='b must be >= 1, got 0'):
        check_at_least(config, 1, 'a', 'b')
