"""SIGKILL the trainer's storage writer N times (100 by default) and report what survived.

Run manually (not part of the tests; test/test_storage_kills.py runs 12 kills)::

    .venv/bin/python bench/storage_kills.py [--kills 100] [--seed 0] [--dir /tmp/x]

Each writer (test/storage_torture.py) opens the replay buffer, removes stale temp files,
resumes its step from the training state and then appends transitions, writes a
policy_<step> file every 4 and an 8 MB training state every 12, until it is killed at a
random moment. Printed: kills, transitions whose add() had returned (committed) and how
many of them are missing or differ after the last restart, temp files the kills left and
how many were still there after the next start-up, policy files written, rewrites of an
existing name refused, and names that ever held two different contents.
It also runs 1,000 policy loads in two threads while another process keeps replacing the
file with a policy of another spec and other weights, and counts mixed loads.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
sys.path.insert(0, str(REPO))

REPLACER = r"""
import os, sys
directory, sources = sys.argv[1], [open(p, 'rb').read() for p in sys.argv[2:4]]
target, stop, k = os.path.join(directory, 'policy.safetensors'), os.path.join(directory, 'stop'), 0
while not os.path.exists(stop):
    tmp = os.path.join(directory, '.policy.safetensors.%08d.tmp' % (k % 10**8))
    with open(tmp, 'wb') as handle:
        handle.write(sources[k % 2])
    os.replace(tmp, target)
    k += 1
print(k)
"""


def concurrent_loads(directory: Path, loads: int = 1000) -> dict:
    """Load a policy file `loads` times while another process replaces it; count mixes."""
    import torch

    from av_td3_ros.policy.checkpoint import PolicySpec, load_policy, save_policy
    from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
    variants = {}
    for seed, activation in ((1, 'leaky_relu'), (2, 'relu')):
        torch.manual_seed(seed)
        spec = PolicySpec(network=NetworkConfig(activation=activation))
        policy = ActorPolicy(spec.network)
        source = directory / f'{activation}.safetensors'
        save_policy(source, policy, spec)
        variants[activation] = (source, policy.state_dict()['actor.fc1.weight'].clone())
    shared = directory / 'shared'
    shared.mkdir()
    target = shared / 'policy.safetensors'
    target.write_bytes(variants['relu'][0].read_bytes())
    replacer = subprocess.Popen([sys.executable, '-c', REPLACER, str(shared),
                                 *(str(v[0]) for v in variants.values())],
                                stdout=subprocess.PIPE, text=True)
    counts = {'loads': 0, 'mixed': 0}
    lock = threading.Lock()

    def load_many(count):
        for _ in range(count):
            loaded, metadata = load_policy(target)
            activation = PolicySpec.from_metadata(metadata).network.activation
            same = torch.equal(loaded.state_dict()['actor.fc1.weight'], variants[activation][1])
            with lock:
                counts['loads'] += 1
                counts['mixed'] += not same

    readers = [threading.Thread(target=load_many, args=(loads // 2,)) for _ in range(2)]
    try:
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        (shared / 'stop').touch()
        counts['replacements'] = int(replacer.communicate(timeout=60)[0])
    return counts


def main():
    """Run the kills and the concurrent loads; print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kills', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--capacity', type=int, default=40000,
                        help='replay capacity (records); must exceed everything written')
    parser.add_argument('--loads', type=int, default=1000)
    parser.add_argument('--dir', default=None, help='work directory (default: a temp dir)')
    args = parser.parse_args()
    from storage_torture import run_kills
    work = Path(args.dir or tempfile.mkdtemp(prefix='storage_kills_'))
    start = time.monotonic()
    figures = run_kills(work / 'run', args.kills, seed=args.seed, capacity=args.capacity,
                        log=lambda text: print(text, flush=True))
    figures['seconds'] = round(time.monotonic() - start, 1)
    loads_dir = work / 'loads'
    loads_dir.mkdir()
    figures['concurrent_loads'] = concurrent_loads(loads_dir, args.loads)
    print(json.dumps(figures, indent=1))


if __name__ == '__main__':
    main()
