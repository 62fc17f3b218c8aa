"""Turn a camera frame into a vehicle command: pipeline, decision, hot reload (no rclpy).

Shared by the driver node and offline bag evaluation.
"""
