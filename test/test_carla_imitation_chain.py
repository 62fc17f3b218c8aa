# Test the CARLA imitation workflow of docs/carla.md end to end against the fake bridge, with
# tiny budgets: the expert drives and is recorded, train_offline clones it, one DAgger round
# is recorded and retrained, then the trainer fine-tunes from that clone with the BC term and
# scores noise-free evaluations, keeping the best policy. Each step is the launch file or the
# command a CARLA user runs (carla_train.launch.xml without the bridge, train_offline).
import json
import time

import pytest
import yaml
from carla_fake_bridge import FakeCarlaWorld
from helpers import REPO_LAUNCH, launch_nodes, trainer_params
from std_msgs.msg import Header, String

from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
from av_td3_ros.tools.train_offline import main as train_offline

ROLE = 'ego_vehicle'
OFFLINE = ['--batch-size', '8', '-p', 'torch_threads:=1', '-p', 'device:=cpu']


class Episodes:
    """Collect episode_start labels and episode_end texts in the world's node."""

    def __init__(self, world):
        self.starts, self.ends = [], []
        world.node.create_subscription(Header, f'/av_td3/{ROLE}/episode_start',
                                       lambda msg: self.starts.append(msg.frame_id), 10)
        world.node.create_subscription(String, f'/av_td3/{ROLE}/episode_end',
                                       lambda msg: self.ends.append(msg.data), 10)


def run_step(start_node, rclpy_context, tmp_path, name, done, readers, timeout=150.0,
             **arguments):
    """Launch carla_train.launch.xml (no bridge) with `arguments`; tick until `done(episodes)`.

    `readers`: how many nodes read the camera (tick only once they all match). Return the
    started nodes (still running) and what the world saw.
    """
    folder = tmp_path / name
    folder.mkdir()
    _, nodes = launch_nodes(start_node, folder, REPO_LAUNCH / 'carla_train.launch.xml',
                            with_bridge='false', use_sim_time='false', device='cpu',
                            run_dir=str(tmp_path / 'run'), episode_timeout='30.0',
                            spawn_points_file=str(tmp_path / 'spawns.yaml'), **arguments)
    world = FakeCarlaWorld(rclpy_context, start=(0.0, 0.0, 0.0))
    episodes = Episodes(world)
    logs = lambda: [node.output()[-2500:] for node in nodes]  # noqa: E731
    try:
        assert world.spin_until(
            lambda: world.image_pub.get_subscription_count() >= readers
            and world.node.count_subscribers(f'/av_td3/{ROLE}/episode_start') >= readers + 1
            and world.node.count_publishers(f'/av_td3/{ROLE}/episode_start') >= 1,
            timeout=90.0), logs()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(episodes):
            world.tick(timeout=1.0)
        assert done(episodes), (episodes.starts, episodes.ends, logs())
        assert all(node.proc.poll() is None for node in nodes), logs()
    finally:
        world.close()
    return nodes, episodes


def stop(nodes):
    """Stop every node like Ctrl-C (the recorder then closes its bag)."""
    for node in nodes:
        status = node.interrupt()
        if node.log_path.name.startswith('bag_record'):
            assert status == 0, node.output()


def bag_topics(bag):
    metadata = yaml.safe_load((bag / 'metadata.yaml').read_text())
    info = metadata['rosbag2_bagfile_information']
    return {entry['topic_metadata']['name']: entry['message_count']
            for entry in info['topics_with_message_count']}


@pytest.mark.slow
def test_the_carla_imitation_workflow_runs_end_to_end(start_node, rclpy_context, tmp_path):
    # Two spawn points 30 m apart facing each other: episodes drive A -> B, B -> A, ...
    (tmp_path / 'spawns.yaml').write_text(yaml.safe_dump(
        {'spawn_points': [[0.0, 0.0, 0.5, 0.0], [30.0, 0.0, 0.5, 180.0]]}))
    base = f'/carla/{ROLE}'

    # 1. The expert drives two routes to their ends and is recorded.
    expert_bag = tmp_path / 'expert1'
    nodes, episodes = run_step(
        start_node, rclpy_context, tmp_path, 'expert', readers=2, mode='expert',
        train='false', record='true', bag=str(expert_bag), eval_every='0',
        done=lambda e: sum(end.startswith('terminated:route_completed') for end in e.ends)
        >= 2)
    stop(nodes)
    counts = bag_topics(expert_bag)
    for topic in (f'{base}/rgb_front/image', f'{base}/vehicle_control_cmd',
                  f'{base}/odometry', f'/av_td3/{ROLE}/episode_start'):
        assert counts.get(topic, 0) > 0, counts

    # 2. Clone it into a camera policy.
    bc = tmp_path / 'bc.safetensors'
    report = train_offline(['train_offline', '--bag', str(expert_bag), '--out', str(bc),
                            '--bc-updates', '30', *OFFLINE])
    assert report['transitions'] >= 50 and report['bc_loss_after'] < report['bc_loss_before']
    load_policy(bc, PolicySpec())

    # 3. One DAgger round: the clone drives (the expert takes over at random), recorded, and
    #    every stored state is labelled by the expert in the retraining.
    dagger_bag = tmp_path / 'dagger1'
    nodes, _ = run_step(
        start_node, rclpy_context, tmp_path, 'dagger', readers=2, mode='dagger',
        train='false', record='true', bag=str(dagger_bag), checkpoint=str(bc),
        eval_every='0', done=lambda e: len(e.ends) >= 2)
    driver = next(node for node in nodes if 'driver' in node.log_path.name)
    assert 'loaded bc.safetensors' in driver.output()
    stop(nodes)
    assert bag_topics(dagger_bag).get(f'{base}/vehicle_control_cmd', 0) > 0
    dagger = tmp_path / 'dagger.safetensors'
    report = train_offline(['train_offline', '--bag', str(expert_bag), str(dagger_bag),
                            '--out', str(dagger), '--bc-updates', '30', *OFFLINE])
    assert report['transitions'] > 50

    # 4. TD3 with the BC term from the DAgger policy, a noise-free evaluation of 2 episodes
    #    after every training episode, the best policy kept.
    params = trainer_params(tmp_path, tensorboard=False, max_episode_steps=25,
                            initial_policy=str(dagger), bc_weight=1.0, keep_checkpoints=20)
    run = tmp_path / 'run'
    evaluations = run / 'eval' / 'evaluations.jsonl'
    best_policy = run / 'best' / 'policy.safetensors'
    nodes, episodes = run_step(
        start_node, rclpy_context, tmp_path, 'train', readers=2, trainer_params_file=str(params),
        learning_starts='0', eval_every='1', eval_episodes='2',
        done=lambda e: evaluations.exists() and evaluations.read_text().count('\n') >= 2
        and best_policy.exists())
    trainer = next(node for node in nodes if 'trainer' in node.log_path.name)
    stop(nodes)
    evaluation_starts = [label for label in episodes.starts if 'eval' in label]
    assert evaluation_starts[:2] == ['2 eval 1/2', '3 eval 2/2'], episodes.starts
    scored = [json.loads(line) for line in (run / 'eval' / 'episodes.jsonl').open()]
    assert len(scored) >= 4, trainer.output()[-3000:]
    for record in scored:
        assert 0.0 <= record['route_completion'] <= 1.0 and record['collisions'] == 0
    # The driver names its policy; the first evaluation may end before the trainer has
    # discovered the driver's latched topic (then nothing is kept), later ones may not.
    assert scored[-1]['policy'].startswith('policy_'), scored
    summaries = [json.loads(line) for line in evaluations.open()]
    best = json.loads((run / 'best' / 'evaluation.json').read_text())
    assert best['mean_return'] == max(s['mean_return'] for s in summaries if s['best'])
    load_policy(best_policy, PolicySpec())
    # Training episodes are logged as before, with the new scores; evaluations are not.
    trained = [json.loads(line) for line in (run / 'episodes.jsonl').open()]
    assert trained and all('route_completion' in record for record in trained)
    assert len(trained) <= len(episodes.starts) - len(evaluation_starts)
