"""The QoS profiles the nodes share, and what the Fast DDS profile in use lets through.

Fast DDS drops a sample that does not fit the sender's shared-memory segment without any
error on either side, so the driver says what the limit is when camera publishers are matched
and no frame arrives.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'
FASTDDS_DEFAULT_SEGMENT = 512 * 1024
"""Fast DDS's built-in shared-memory segment size (bytes) when no profile sets one."""


def reliable(depth: int, latched: bool = False) -> QoSProfile:
    """Return a reliable keep-last-`depth` profile; `latched`: transient local as well."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE))


LATCHED = reliable(1, latched=True)
"""Keep the newest sample for late joiners (routes, episode_start, policies)."""


def shared_memory_segment(profile_path: str | None = None) -> int | None:
    """Return the largest SHM `segment_size` (bytes) in a Fast DDS profile, or None.

    `profile_path` defaults to $FASTDDS_DEFAULT_PROFILES_FILE; None when it is unset,
    unreadable, or has no SHM transport with a segment size.
    """
    path = os.environ.get(PROFILE_VARIABLE) if profile_path is None else profile_path
    if not path:
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    sizes = []
    for descriptor in root.iter():
        if not descriptor.tag.endswith('transport_descriptor'):
            continue
        fields = {child.tag.rsplit('}', 1)[-1]: (child.text or '').strip()
                  for child in descriptor}
        if fields.get('type') == 'SHM' and fields.get('segment_size', '').isdigit():
            sizes.append(int(fields['segment_size']))
    return max(sizes) if sizes else None


def shared_memory_limit(profile_path: str | None = None) -> str:
    """Describe the shared-memory limit on a frame's size, for a log line."""
    path = os.environ.get(PROFILE_VARIABLE) if profile_path is None else profile_path
    segment = shared_memory_segment(path)
    if segment is None:
        where = 'unset' if not path else f'{path!r} (no SHM segment in it)'
        return (f'{PROFILE_VARIABLE} is {where}, so Fast DDS uses its defaults '
                f'({FASTDDS_DEFAULT_SEGMENT // 1024} KiB shared-memory segment, UDP fragments '
                'that best effort loses)')
    return (f'the shared-memory segment of {path} is {segment / 2**20:.0f} MiB, so a frame '
            f'(height*step bytes) must stay well below that')
