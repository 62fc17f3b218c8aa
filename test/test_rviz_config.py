# Test that every rviz display in config/av_td3.rviz shows a topic our nodes publish, with the
# type the display expects (simulator + driver running over real DDS).
import yaml
from helpers import REPO, REPO_LAUNCH, launch_nodes
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import SpinningNode
from sensor_msgs.msg import Image

DISPLAY_TYPES = {
    'rviz_default_plugins/Image': 'sensor_msgs/msg/Image',
    'rviz_default_plugins/MarkerArray': 'visualization_msgs/msg/MarkerArray',
    'rviz_default_plugins/Odometry': 'nav_msgs/msg/Odometry',
    'rviz_default_plugins/Path': 'nav_msgs/msg/Path',
}


def rviz_topics():
    config = yaml.safe_load((REPO / 'config' / 'av_td3.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    topics = {}
    for display in displays:
        if 'Topic' in display:
            assert display['Class'] in DISPLAY_TYPES, display['Class']
            topics[display['Topic']['Value']] = DISPLAY_TYPES[display['Class']]
    return topics


def test_rviz_config_names_existing_topics(start_node, tmp_path, make_probe):
    expected = rviz_topics()
    assert len(expected) >= 5
    launch_nodes(start_node, tmp_path, REPO_LAUNCH / 'sim_drive.launch.xml',
                 allow_random_policy='true', device='cpu')
    # A bare node (no publishers of its own) so only the launched nodes can satisfy the check.
    probe = make_probe(SpinningNode, 'rviz_check')
    node, spin_until = probe.node, probe.spin_until
    stacks = []
    node.create_subscription(
        Image, '/ego_vehicle/driver/debug/frame_stack', stacks.append,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    def published():
        graph = dict(node.get_topic_names_and_types())
        return all(topic in graph and node.count_publishers(topic) > 0
                   for topic in expected)

    assert spin_until(published, timeout=60.0), (
        sorted(expected), dict(node.get_topic_names_and_types()))
    graph = dict(node.get_topic_names_and_types())
    for topic, type_name in expected.items():
        assert type_name in graph[topic], (topic, graph[topic])
    # The debug stack is really published (4 frames of 84x84 side by side, mono8).
    assert spin_until(lambda: stacks, timeout=30.0)
    assert (stacks[0].encoding, stacks[0].height, stacks[0].width) == ('mono8', 84, 336)


def test_rviz_window_and_view_settings():
    config = yaml.safe_load((REPO / 'config' / 'av_td3.rviz').read_text())
    geometry = config['Window Geometry']
    # rviz2 reads both with mapGetBool into a bool it never initialises when the key is absent.
    assert geometry['Hide Left Dock'] is False and geometry['Hide Right Dock'] is False
    view = config['Visualization Manager']['Views']['Current']
    # The view follows the car: the CARLA bridge's TF frame of the ego vehicle is its role
    # name, the child_frame_id of its odometry, which the rviz odometry display shows.
    assert view['Target Frame'] == 'ego_vehicle'
    topics = rviz_topics()
    assert '/carla/ego_vehicle/odometry' in topics
    assert config['Visualization Manager']['Global Options']['Fixed Frame'] == 'map'
