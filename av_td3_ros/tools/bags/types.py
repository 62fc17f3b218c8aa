"""Message types for bags: a rosbags typestore with carla_msgs, and rclpy class lookup.

The carla_msgs definitions come from share/av_td3_ros/msg (or the checkout's
carla_msgs_fallback). Their RIHS01 hashes equal the ones rmw announces (checked by
test_bags), so bags written here carry the `type_description_hash` `ros2 bag record` would.
"""
from __future__ import annotations

import importlib
import os
import struct
from functools import lru_cache
from pathlib import Path

from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

REPO_MSG_DIR = (Path(__file__).resolve().parents[3] / 'carla_msgs_fallback' / 'carla_msgs'
                / 'msg')
CARLA_PACKAGE = 'carla_msgs'


class UnknownTypeError(LookupError):
    """A message type that neither the typestore nor any share/<pkg>/msg directory defines."""


def _prefixes() -> list[Path]:
    return [Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]


def carla_msg_dir() -> Path:
    """Return the directory holding the project's carla_msgs .msg files."""
    for prefix in _prefixes():
        candidate = prefix / 'share' / 'av_td3_ros' / 'msg'
        if any(candidate.glob('*.msg')):
            return candidate
    if any(REPO_MSG_DIR.glob('*.msg')):
        return REPO_MSG_DIR
    raise UnknownTypeError('no carla_msgs .msg files: neither share/av_td3_ros/msg under '
                           f'AMENT_PREFIX_PATH nor {REPO_MSG_DIR}')


def _register_dir(store, directory: Path, package: str):
    types = {}
    for path in sorted(directory.glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{package}/msg/{path.stem}'))
    store.register(types)


@lru_cache(maxsize=1)
def typestore():
    """Return the shared Kilted typestore with carla_msgs registered (do not mutate it)."""
    store = get_typestore(Stores.ROS2_KILTED)
    _register_dir(store, carla_msg_dir(), CARLA_PACKAGE)
    return store


def _nested_names(store, typename: str) -> set[str]:
    names = set()
    _, fields = store.fielddefs[typename]
    for _, (kind, detail) in fields:
        # Arrays and sequences wrap their element as ((kind, detail), size).
        while kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            (kind, detail), _ = detail
        if kind == Nodetype.NAME:
            names.add(detail)
    return names


def find_msg_file(typename: str) -> Path | None:
    """Return share/<pkg>/msg/<Name>.msg for `pkg/msg/Name` under AMENT_PREFIX_PATH."""
    package, _, name = typename.split('/')
    for prefix in _prefixes():
        candidate = prefix / 'share' / package / 'msg' / f'{name}.msg'
        if candidate.is_file():
            return candidate
    return None


def ensure_type(store, typename: str):
    """Register `typename` (and the types it uses) from .msg files if the store lacks it.

    Raise UnknownTypeError when there is no definition (a bag needs it, and its hash).
    """
    pending = [typename]
    while pending:
        name = pending.pop()
        if name not in store.fielddefs:
            path = find_msg_file(name) if name.count('/') == 2 else None
            if path is None:
                raise UnknownTypeError(f'no definition for message type {name!r} (not in the '
                                       'rosbags typestore, no share/<pkg>/msg file)')
            store.register(get_types_from_msg(path.read_text(), name))
        pending.extend(n for n in _nested_names(store, name) if n not in store.fielddefs)


def message_class(typename: str):
    """Import the rclpy message class for 'pkg/msg/Name' (e.g. sensor_msgs/msg/Image)."""
    try:
        package, kind, name = typename.split('/')
    except ValueError:
        raise UnknownTypeError(f'bad message type name {typename!r}') from None
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError) as error:
        raise UnknownTypeError(f'cannot import {typename}: {error}') from error


def header_stamp_ns(raw) -> int:
    """Return the std_msgs/Header stamp (ns) that starts a CDR message, without parsing it.

    After the 4-byte encapsulation header come int32 sec and uint32 nanosec, in the byte order
    the encapsulation names.
    """
    little = bytes(raw[1:2]) == b'\x01'
    sec, nanosec = struct.unpack('<iI' if little else '>iI', bytes(raw[4:12]))
    return sec * 1_000_000_000 + nanosec
