"""ROS 2 nodes and the glue they share: the only package that imports rclpy.

Nodes are thin: read parameters once, build a config, call the core (driving, learning, sim).
"""
