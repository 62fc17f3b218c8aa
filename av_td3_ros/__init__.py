"""Drive a CARLA car from its camera with a TD3 policy and train it over ROS 2."""
from . import _moved

__version__ = '0.1.0'

# Old flat module names (av_td3_ros.driver_node, ...) still import, with a DeprecationWarning.
_moved.install()
