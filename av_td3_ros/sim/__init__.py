"""Simulate without CARLA and judge driving: the simulation core (no rclpy).

The CarRacing stand-in, the route expert, the rules of CARLA episodes and in-process
evaluation of a policy or the expert.
"""
