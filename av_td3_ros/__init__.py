"""Drive a CARLA car from its camera with a TD3 policy and train it over ROS 2.

Subpackages form layers; each imports only from the layers below it (test/test_layout.py):
policy < experts < task < driving < sim < learning < nodes < tools, over the top-level
helpers (`config_diff`, `throttled_log`, `validation`).
"""

__version__ = '0.1.0'
