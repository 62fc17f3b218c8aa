"""ROS 2 bag tools: record, replay and offline evaluation of the driver (rosbags based).

rosbag2 itself is not installable here, so these tools read and write the rosbag2 layout
(metadata.yaml version 9, mcap or sqlite3 storage) with the pure-Python `rosbags` library.
Recorded messages stay serialized (CDR) end to end: the recorder writes what DDS delivered
and the player publishes those bytes back.
"""
from rosbags.rosbag2 import StoragePlugin

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
"""The storage plugins the bag tools write, by name (pure: bag_eval needs no rclpy for it)."""
