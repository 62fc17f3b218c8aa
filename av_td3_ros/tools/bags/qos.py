"""QoS for bag tools: what to subscribe/publish with, and rclpy -> rosbags QoS records."""
from __future__ import annotations

from collections.abc import Iterable

from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

RECORD_DEPTH = 100  # the recorder's subscription depth: bursts queue rather than drop


def _time(duration: Duration) -> QosTime:
    sec, nsec = divmod(duration.nanoseconds, 1_000_000_000)
    return QosTime(sec, nsec)


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


def subscription_qos(offered: Iterable[QoSProfile], latched: bool = False) -> QoSProfile:
    """Return a recorder subscription QoS that matches every offered publisher QoS.

    Reliable unless every publisher is best effort (a reliable reader cannot match a
    best-effort writer); transient-local when every publisher is, or the topic is latched.
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
    """Return a reliable player QoS (it matches best-effort readers too), latched as recorded."""
    offered = list(offered)
    transient = latched or (bool(offered) and all(
        q.durability == QosDurability.TRANSIENT_LOCAL for q in offered))
    return QoSProfile(depth=1 if transient else 10, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient
                                  else DurabilityPolicy.VOLATILE))
