"""Install av_td3_ros as an ament_python package (colcon) or into a venv (pip)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'av_td3_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=[package_name, package_name + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.*')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')
         + glob('config/*.rviz') + glob('config/*.json')),
        ('share/' + package_name + '/msg', glob('carla_msgs_fallback/carla_msgs/msg/*.msg')),
        ('share/' + package_name + '/models', glob('models/*.safetensors') + glob('models/*.md')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=True,
    maintainer='av_td3_ros developers',
    maintainer_email='av-td3-ros@example.com',
    description='TD3 camera driving policy for CARLA over ROS 2, with training and tools.',
    license='MIT',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'driver_node = av_td3_ros.nodes.driver:main',
            'trainer_node = av_td3_ros.nodes.trainer:main',
            'sim_bridge = av_td3_ros.nodes.sim_bridge:main',
            'metadrive_bridge = av_td3_ros.nodes.metadrive_bridge:main',
            'import_checkpoint = av_td3_ros.tools.importer:main',
            'bag_record = av_td3_ros.tools.bags.record:main',
            'bag_replay = av_td3_ros.tools.bags.replay:main',
            'bag_eval = av_td3_ros.tools.bags.offline_eval:main',
            'plot_run = av_td3_ros.tools.plots:main',
            'run_launch = av_td3_ros.tools.launch_runner:main',
            'train_imitation = av_td3_ros.tools.train_imitation:main',
            'evaluate_policy = av_td3_ros.tools.evaluate_policy:main',
            'finetune_policy = av_td3_ros.tools.finetune_policy:main',
            'train_offline = av_td3_ros.tools.train_offline:main',
            'publish_policy = av_td3_ros.nodes.policy_topic:main',
            'carla_episode_manager = av_td3_ros.nodes.carla_episode_manager:main',
        ],
    },
)
