"""Say what a policy is: preprocessing, features, the actor, its checkpoint and inference.

The lowest layer (no rclpy, no learning code): the driver process needs nothing above it to
run a policy.
"""
