"""QoS for bag tools: what to subscribe/publish with, and rclpy <-> rosbags QoS records."""
from __future__ import annotations

from collections.abc import Iterable

from rclpy.duration import Duration, Infinite
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

RECORD_DEPTH = 100
"""Subscription depth of the recorder: bursts queue here rather than being dropped."""
# Older rosbag2 versions wrote infinite durations as INT32_MAX s + UINT32_MAX ns.
_LEGACY_INFINITE = QosTime(2147483647, 4294967295)


def _time(duration: Duration) -> QosTime:
    sec, nsec = divmod(duration.nanoseconds, 1_000_000_000)
    return QosTime(sec, nsec)


def _duration(time: QosTime) -> Duration:
    nanoseconds = time.sec * 1_000_000_000 + time.nsec
    if time == _LEGACY_INFINITE or nanoseconds >= Infinite.nanoseconds:
        return Infinite
    return Duration(nanoseconds=nanoseconds)


def to_bag_qos(profile: QoSProfile) -> Qos:
    """Convert an rclpy QoSProfile (e.g. a publisher's, from the graph) to a rosbags Qos."""
    return Qos(
        history=QosHistory[profile.history.name],
        depth=int(profile.depth),
        reliability=QosReliability[profile.reliability.name],
        durability=QosDurability[profile.durability.name],
        deadline=_time(profile.deadline),
        lifespan=_time(profile.lifespan),
        liveliness=QosLiveliness[profile.liveliness.name],
        liveliness_lease_duration=_time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def from_bag_qos(qos: Qos) -> QoSProfile:
    """Convert a rosbags Qos (a bag's offered_qos_profiles entry) to an rclpy QoSProfile."""
    history = HistoryPolicy[qos.history.name]
    if history not in (HistoryPolicy.KEEP_LAST, HistoryPolicy.KEEP_ALL):
        history = HistoryPolicy.KEEP_LAST  # graph queries report UNKNOWN/depth 0
    return QoSProfile(
        history=history,
        depth=max(int(qos.depth), 1),
        reliability=ReliabilityPolicy[qos.reliability.name],
        durability=DurabilityPolicy[qos.durability.name],
        deadline=_duration(qos.deadline),
        lifespan=_duration(qos.lifespan),
        liveliness=LivelinessPolicy[qos.liveliness.name],
        liveliness_lease_duration=_duration(qos.liveliness_lease_duration),
        avoid_ros_namespace_conventions=qos.avoid_ros_namespace_conventions)


def subscription_qos(offered: Iterable[QoSProfile], latched: bool = False) -> QoSProfile:
    """Return a recorder subscription that matches every offered publisher QoS.

    Reliable unless every publisher is best effort (a reliable reader cannot match a
    best-effort writer); transient-local when every publisher is, or the topic is known to
    be latched, so the last message published before recording started is received too.
    """
    offered = list(offered)
    best_effort = bool(offered) and all(
        p.reliability == ReliabilityPolicy.BEST_EFFORT for p in offered)
    transient = (bool(offered) and all(
        p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)) or (
        latched and not any(p.durability == DurabilityPolicy.VOLATILE for p in offered))
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
        reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                     else ReliabilityPolicy.RELIABLE),
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                    else DurabilityPolicy.VOLATILE))


def publisher_qos(offered: Iterable[Qos], latched: bool = False) -> QoSProfile:
    """Return a player publisher QoS: reliable (matches any reader), latched when recorded so.

    Reliable writers match best-effort readers too, so replay never loses a subscriber
    because the recording publisher was best effort.
    """
    offered = list(offered)
    transient = latched or (bool(offered) and all(
        q.durability == QosDurability.TRANSIENT_LOCAL for q in offered))
    if transient:
        return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
