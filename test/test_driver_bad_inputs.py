# The driver over real DDS against bad input: a matrix of bad kinds and a seeded frame fuzz.
# Every bad message must be answered by a full brake whose reason (on /diagnostics, with the
# frame's stamp) names it, the process must never exit, and a good frame drives again.
import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from helpers import REPO_LAUNCH, is_full_brake, launch_nodes
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import FakeBridge, odometry_msg, path_msg
from sensor_msgs.msg import Image

DRIVER_LAUNCH = REPO_LAUNCH / 'driver.launch.xml'
WIDTH, HEIGHT = 160, 120  # small frames: these tests are about content, not size
CHANNELS = {'bgra8': 4, 'bgr8': 3, 'rgba8': 4, 'rgb8': 3, 'mono8': 1}
NAN, INF = float('nan'), float('inf')
UINT32_MAX = 2**32 - 1


class Probe(FakeBridge):
    """The fake bridge plus the driver's /diagnostics, keyed by the frame a reason is for."""

    def __init__(self, context):
        """Create the bridge node and subscribe to /diagnostics."""
        super().__init__(context)
        self.reasons = {}  # 'sec.nanosec' -> reasons reported for that frame
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      QoSProfile(depth=100,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        self.next_sec = 10_000

    def _on_diagnostics(self, array):
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if 'last_frame_stamp' in values:
                self.reasons.setdefault(values['last_frame_stamp'], []).append(
                    values['last_reason'])

    def stamp(self):
        """Return a fresh, valid frame second."""
        self.next_sec += 1
        return self.next_sec

    def frame(self, sec=None, nanosec=0, encoding='bgra8', height=HEIGHT, width=WIDTH,
              step=None, data=None):
        """Return a frame (good unless fields are overridden) with a unique stamp."""
        channels = CHANNELS.get(encoding, 4)
        step = width * channels if step is None else step
        msg = Image(height=height, width=width, encoding=encoding, step=step)
        msg.header.stamp.sec = self.stamp() if sec is None else sec
        msg.header.stamp.nanosec = nanosec
        if data is None:
            data = bytes((np.arange(min(height * step, 10**7)) * 7 % 251).astype(np.uint8))
        msg.data = data
        return msg

    def commands_at(self, msg):
        """Return the commands carrying `msg`'s stamp."""
        sec, nanosec = msg.header.stamp.sec, msg.header.stamp.nanosec
        return [c for c in self.commands
                if c.header.stamp.sec == sec and c.header.stamp.nanosec == nanosec]

    def answer(self, msg, odometry=True, timeout=2.0, attempts=3):
        """Send a frame (after good odometry) and return its command, re-sending a lost one.

        Best effort keep-last-1 may drop a frame on a starved machine; a re-send of the same
        frame is the driver's normal input, not a second decision.
        """
        for _ in range(attempts):
            if odometry:
                self.publish_odometry()
            self.image_pub.publish(msg)
            if self.spin_until(lambda: self.commands_at(msg), timeout):
                return self.commands_at(msg)[0]
        return None

    def reason(self, msg, timeout=3.0):
        """Return the reason the driver reported for frame `msg` (None if none came)."""
        key = f'{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}'
        # The watchdog may report a stall for the same last frame: that is not its reason.
        frame_reasons = lambda: [r for r in self.reasons.get(key, [])  # noqa: E731
                                 if r not in ('camera stalled', 'waiting for camera')]
        self.spin_until(frame_reasons, timeout)
        found = frame_reasons()
        return found[0] if found else None

    def drives(self, timeout=10.0):
        """Send good frames until one drives; return whether one did in time."""
        deadline = timeout
        while deadline > 0:
            msg = self.frame()
            command = self.answer(msg, attempts=1)
            if command is not None and command.brake < 1.0:
                return True
            deadline -= 2.0 if command is None else 0.2
        return False


# name -> Image field overrides (each a distinct way a frame can be malformed).
BAD_FRAMES = {
    'encoding yuv422': dict(encoding='yuv422'),
    'encoding empty': dict(encoding=''),
    'encoding 16UC1': dict(encoding='16UC1'),
    'encoding 32FC1': dict(encoding='32FC1'),
    'encoding upper-case BGRA8': dict(encoding='BGRA8'),
    'encoding bayer_rggb8': dict(encoding='bayer_rggb8'),
    'no data': dict(data=b''),
    'data one byte short': dict(data=bytes(HEIGHT * WIDTH * 4 - 1)),
    'data one byte long': dict(data=bytes(HEIGHT * WIDTH * 4 + 1)),
    'data 1000 bytes': dict(data=bytes(1000)),
    'height 0': dict(height=0),
    'width 0': dict(width=0),
    'height and width 0, no data': dict(height=0, width=0, data=b''),
    'step 0': dict(step=0),
    'step one short of a row': dict(step=WIDTH * 4 - 1),
    'row padding in step, not in data': dict(step=WIDTH * 4 + 4,
                                              data=bytes(HEIGHT * WIDTH * 4)),
    'height uint32 max': dict(height=UINT32_MAX),
    'width uint32 max': dict(width=UINT32_MAX),
    'step uint32 max': dict(step=UINT32_MAX),
    'mono8 with bgra8 data': dict(encoding='mono8', data=bytes(HEIGHT * WIDTH * 4)),
    'rgb8 with bgra8 data': dict(encoding='rgb8', data=bytes(HEIGHT * WIDTH * 4)),
    'bgr8 with mono8 data': dict(encoding='bgr8', data=bytes(HEIGHT * WIDTH)),
    '1x1 with no data': dict(height=1, width=1, data=b''),
    'stamp nanosec 1e9': dict(nanosec=1_000_000_000),
    'stamp nanosec uint32 max': dict(nanosec=UINT32_MAX),
    'stamp sec -1': dict(sec=-1),
    'stamp sec int32 min': dict(sec=-2**31),
}

BAD_ROUTES = {
    'route with no poses': [],
    'route with one pose': [(0.0, 0.0)],
    'route of two identical poses': [(3.0, 1.0)] * 2,
    'route of three identical poses': [(3.0, 1.0)] * 3,
    'route with NaN in the middle': [(0.0, 0.0), (NAN, 1.0), (4.0, 0.0)],
    'route starting with NaN': [(NAN, NAN), (2.0, 0.0), (4.0, 0.0)],
    'route with +inf x': [(0.0, 0.0), (INF, 0.0)],
    'route with -inf y': [(0.0, 0.0), (2.0, -INF), (4.0, 0.0)],
    'route all NaN': [(NAN, NAN)] * 5,
    'route with 1e300 coordinates': [(0.0, 0.0), (1e300, 1e300)],
    'route of 100 identical poses': [(5.0, 5.0)] * 100,
}

BAD_ODOMETRY = {
    'odometry x NaN': dict(x=NAN),
    'odometry y inf': dict(y=INF),
    'odometry x 1e12 m': dict(x=1e12),
    'odometry quaternion all NaN': dict(qz=NAN, qw=NAN),
    'odometry quaternion z inf': dict(qz=INF),
    'odometry quaternion x NaN only': dict(qx=NAN),
    'odometry velocity NaN': dict(vx=NAN),
    'odometry velocity y -inf': dict(vy=-INF),
    'odometry speed 1e200 m/s': dict(vx=1e200),
    'odometry stamp nanosec 2e9': dict(nanosec=2_000_000_000),
    'odometry stamp sec -3': dict(sec=-3),
}


@pytest.fixture
def probe(make_probe):
    return make_probe(Probe)


@pytest.fixture
def driver(start_node, tmp_path, probe):
    _, (node,) = launch_nodes(start_node, tmp_path, DRIVER_LAUNCH, use_sim_time='false',
                              allow_random_policy='true', device='cpu')
    assert probe.wait_for_subscriber(probe.image_pub), node.output()
    probe.publish_route()  # a good route
    assert probe.drives(timeout=60.0), node.output()
    return node


def test_every_bad_input_kind_brakes_with_its_reason_and_the_driver_goes_on(driver, probe):
    kinds = len(BAD_FRAMES) + len(BAD_ROUTES) + len(BAD_ODOMETRY)
    assert kinds >= 40
    failures = []

    for name, fields in BAD_FRAMES.items():
        msg = probe.frame(**fields)
        command = probe.answer(msg)
        reason = probe.reason(msg)
        if command is None or not is_full_brake(command) or not (reason or '').startswith(
                'bad frame'):
            failures.append((name, command, reason))
        # The very next good frame drives.
        good = probe.frame()
        command = probe.answer(good)
        if command is None or command.brake >= 1.0 or probe.reason(good) != 'policy':
            failures.append((name, 'next good frame', command, probe.reason(good)))

    for kind, cases, publish, repair, prefix in (
            ('route', BAD_ROUTES, lambda case: probe.route_pub.publish(path_msg(case)),
             probe.publish_route, 'bad route'),
            ('odometry', BAD_ODOMETRY, lambda case: probe.odom_pub.publish(odometry_msg(**case)),
             probe.publish_odometry, 'bad odometry')):
        for name, case in cases.items():
            publish(case)
            # The bad message and the frame travel on different topics: send frames (with no
            # odometry of their own) until one was decided after the bad message arrived.
            reason = None
            for _ in range(20):
                msg = probe.frame()
                if kind == 'route':
                    probe.publish_odometry()  # keep odometry fresh; the route is the subject
                command = probe.answer(msg, odometry=False)
                reason = probe.reason(msg) if command is not None else None
                if reason is not None and reason.startswith(prefix):
                    break
            if not (reason or '').startswith(prefix) or not is_full_brake(command):
                failures.append((name, command, reason))
            repair()
            if not probe.drives():
                failures.append((name, 'no driving after a good message'))
    assert not failures, (failures, driver.output()[-3000:])
    assert driver.proc.poll() is None
    output = driver.output()
    assert 'Traceback' not in output and 'failed on' not in output, output[-3000:]
    assert 'route refused' in output and 'bad odometry ignored' in output


def random_frame(probe, rng):
    """Return (frame, whether a correct driver must call it bad) for one fuzz step."""
    encodings = list(CHANNELS)
    encoding = str(rng.choice(encodings))
    height, width = int(rng.integers(1, 200)), int(rng.integers(1, 200))
    step = width * CHANNELS[encoding] + int(rng.integers(0, 9)) * int(rng.random() < 0.3)
    fields = dict(encoding=encoding, height=height, width=width, step=step)
    size = height * step
    sec, nanosec = probe.stamp(), int(rng.integers(0, 10**9))
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 4))):
            mutation = int(rng.integers(0, 9))
            if mutation == 0:
                fields['encoding'] = str(rng.choice(['yuv422', '', 'BGR8', '8UC3', 'jpeg',
                                                     encoding + ' ', 'mono16']))
            elif mutation == 1:
                fields['height'] = int(rng.choice([0, height - 1, height + 1, UINT32_MAX]))
            elif mutation == 2:
                fields['width'] = int(rng.choice([0, width + 1, 2 * width, UINT32_MAX]))
            elif mutation == 3:
                fields['step'] = int(rng.choice([0, step - 1, step + 1, UINT32_MAX]))
            elif mutation == 4:
                size = int(rng.choice([0, max(size - 1, 0), size + 1, size // 2, 3]))
            elif mutation == 5:
                nanosec = int(rng.integers(10**9, UINT32_MAX, endpoint=True))
            elif mutation == 6:
                sec = -int(rng.integers(1, 2**31, endpoint=True))
            elif mutation == 7:
                fields['encoding'] = str(rng.choice(encodings))  # layout of another encoding
            else:
                size = int(rng.integers(0, 3 * height * step + 2))
    data = rng.integers(0, 256, max(min(size, 4 * 10**6), 0), dtype=np.uint8).tobytes()
    msg = probe.frame(sec=sec, nanosec=nanosec, data=data, **fields)
    h, w, s, enc = msg.height, msg.width, msg.step, msg.encoding
    bad = (enc not in CHANNELS or h == 0 or w == 0 or s < w * CHANNELS[enc]
           or len(data) != h * s or sec < 0 or nanosec >= 10**9)
    return msg, bad


@pytest.mark.slow
def test_seeded_frame_fuzz_over_dds(driver, probe):
    rng = np.random.default_rng(20261201)
    lost, wrong = [], []
    bad_count = 0
    for index in range(1000):
        msg, bad = random_frame(probe, rng)
        bad_count += bad
        command = probe.answer(msg)
        if command is None:
            lost.append(index)
            continue
        if bad:
            reason = probe.reason(msg)
            if not is_full_brake(command) or not (reason or '').startswith('bad frame'):
                wrong.append((index, msg.encoding, msg.height, msg.width, msg.step,
                              len(msg.data), command.brake, reason))
        elif command.brake >= 1.0 or not math.isfinite(command.steer):
            wrong.append((index, 'good frame braked', msg.encoding, msg.height, msg.width,
                          msg.step, probe.reason(msg)))
    print(f'fuzz: {bad_count} bad frames of 1000, {len(lost)} lost, {len(wrong)} wrong')
    assert 300 < bad_count < 700  # both kinds are well represented
    assert not wrong, (wrong[:10], driver.output()[-3000:])
    # Three sends of the same frame all lost would be a broken transport, not a busy one.
    assert len(lost) <= 5, lost
    assert driver.proc.poll() is None
    assert 'Traceback' not in driver.output()


def bad_checkpoints(good_path):
    """Return {name: bytes of a bad policy file} built from a good one."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from av_td3_ros.policy.checkpoint import POLICY_FORMAT, PolicySpec
    from av_td3_ros.policy.networks import NetworkConfig

    good = good_path.read_bytes()
    state = load_file(str(good_path))
    spec = PolicySpec().to_metadata()
    scratch = good_path.parent / 'scratch.bin'

    def saved(tensors, metadata):
        save_file(tensors, str(scratch), metadata=metadata)
        return scratch.read_bytes()

    unknown = json.loads(spec['network'])
    unknown['secret_switch'] = True
    poisoned = {k: v.clone() for k, v in state.items()}
    poisoned['actor.fc3.bias'].fill_(float('nan'))
    return {
        'empty file': b'',
        'random bytes': bytes(np.random.default_rng(1).integers(0, 256, 1000, np.uint8)),
        'header longer than the file': (10**6).to_bytes(8, 'little') + b'{}',
        'header not JSON': (8).to_bytes(8, 'little') + b'not json',
        'truncated file': good[:len(good) // 2],
        'no format metadata': saved(state, {}),
        'network config not JSON': saved(state, {**spec, 'format': POLICY_FORMAT,
                                                 'network': '{oops'}),
        'unknown network field': saved(state, {**spec, 'format': POLICY_FORMAT,
                                               'network': json.dumps(unknown)}),
        'architecture mismatch (relu)': saved(state, {
            **PolicySpec(network=NetworkConfig(activation='relu')).to_metadata(),
            'format': POLICY_FORMAT}),
        'NaN weights': saved(poisoned, {**spec, 'format': POLICY_FORMAT}),
        'weights of another shape': saved({**state, 'actor.fc3.bias': torch.zeros(7)},
                                          {**spec, 'format': POLICY_FORMAT}),
    }


@pytest.mark.slow
def test_bad_checkpoints_are_refused_naming_the_file_and_driving_goes_on(start_node,
                                                                         tmp_path, probe):
    import torch

    from av_td3_ros.policy.checkpoint import PolicySpec, policy_path, save_policy
    from av_td3_ros.policy.networks import ActorPolicy
    directory = tmp_path / 'checkpoints'
    directory.mkdir()
    torch.manual_seed(0)
    save_policy(policy_path(directory, 1), ActorPolicy(PolicySpec().network), PolicySpec())
    driver = start_node('av_td3_ros.nodes.driver', '-p', f'checkpoint:={directory}',
                        '-p', 'checkpoint_poll_period:=0.1', '-p', 'device:=cpu',
                        '-p', 'publish_debug:=false')
    assert probe.wait_for_subscriber(probe.image_pub), driver.output()
    probe.publish_route()  # a good route
    assert probe.drives(timeout=60.0), driver.output()
    cases = bad_checkpoints(policy_path(directory, 1))
    for step, (name, data) in enumerate(cases.items(), start=2):
        path = policy_path(directory, step)
        temp = directory / 'incoming.tmp'
        temp.write_bytes(data)
        temp.rename(path)  # appears whole, as the trainer writes
        assert driver.wait_for_output(f'{path.name}', timeout=20.0), (name, driver.output())
        assert probe.drives(), (name, driver.output())  # the previous policy still drives
    output = driver.output()
    assert output.count('keeping the current policy') == len(cases), output
    assert driver.proc.poll() is None and 'Traceback' not in output
