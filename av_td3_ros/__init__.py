"""Drive a CARLA car from its camera with a TD3 policy and train it over ROS 2."""

__version__ = '0.1.0'
