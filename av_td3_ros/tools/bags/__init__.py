"""ROS 2 bag tools: record, replay and offline evaluation of the driver (rosbags based).

rosbag2 is not installable here, so these tools read and write its layout (metadata.yaml
version 9, mcap or sqlite3) with the pure-Python `rosbags`. Messages stay CDR end to end.
"""
from rosbags.rosbag2 import StoragePlugin

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
"""The storage plugins the bag tools write, by name (pure: bag_eval needs no rclpy for it)."""
