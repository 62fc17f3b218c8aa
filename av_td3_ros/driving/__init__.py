"""Turn a camera frame into a vehicle command: the driving core (no rclpy).

preprocessing, features, networks, inference (torch or ONNX Runtime), pipeline, control and
the per-frame decision, shared by the driver node and offline bag evaluation.
"""
