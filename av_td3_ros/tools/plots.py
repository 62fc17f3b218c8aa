"""Plot a driving run from bags and/or a trainer log directory (PNG files, matplotlib Agg).

    plot_run [--bag BAG ...] [--log-dir DIR | --episodes FILE] -o OUT_DIR [--role ego_vehicle]
             [--max-stacks 16]

Writes what the inputs have data for: controls.png (steer, throttle, brake over the camera
timeline; frames without a command marked red), frame_stacks.png (the driver's debug frame
stacks, e.g. from bag_eval output, with each command; else the 84x84 grey camera frames) and
returns.png (episode returns and lengths). Several bags are merged; where more than one holds
a frame's command, the last bag given wins (put bag_eval output last). Episodes come from
`episodes.jsonl` in --log-dir (or --episodes, .jsonl or .csv with the columns episode, return,
length, stamp), else from the bags' /av_td3/<role>/episode_end messages.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from av_td3_ros.task.episode_end import EpisodeEndMessage, parse_episode_end

EPISODES_FILE = 'episodes.jsonl'


@dataclass
class Command:
    """One control command as plotted."""

    t_ns: int
    steer: float
    throttle: float
    brake: float


@dataclass
class RunData:
    """What a run's bags hold, keyed by header stamps (ns)."""

    frames: list[int] = field(default_factory=list)  # camera stamps, in bag order
    commands: dict[int, Command] = field(default_factory=dict)
    """Command per stamp: a bag's first one, from the last bag that has one."""
    stacks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (stamp, mono8)
    gray_frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    """(stamp, 84x84 grey) camera frames, kept only when there are no debug stacks."""
    episode_ends: list[EpisodeEndMessage] = field(default_factory=list)


def _number(value, kind=float):
    if value is None or value == '':
        return None
    return kind(value)


def read_episodes(path: str | Path) -> list[dict]:
    """Read episode records from an episodes.jsonl (or CSV with the same columns) file."""
    path = Path(path)
    if path.suffix == '.csv':
        with open(path, newline='') as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{'episode': _number(row.get('episode'), int), 'return': float(row['return']),
             'length': _number(row.get('length'), int), 'stamp': _number(row.get('stamp'))}
            for row in rows]


def episodes_from_bag(run: RunData) -> list[dict]:
    """Turn the episode_end messages of a run into episode records."""
    records = []
    for index, end in enumerate(run.episode_ends):
        if end.episode_return is None:
            continue
        records.append({'episode': index, 'return': end.episode_return, 'length': end.steps,
                        'stamp': None if end.stamp_ns is None else end.stamp_ns / 1e9})
    return records


def read_run(bags, role: str = 'ego_vehicle', camera_topic: str | None = None,
             control_topic: str | None = None, debug_topic: str | None = None) -> RunData:
    """Collect camera stamps, commands, debug stacks and episode ends from bags."""
    from rosbags.rosbag2 import Reader

    from av_td3_ros.policy.preprocessing import ImageFormatError, ImageView, to_gray
    from av_td3_ros.tools.bags.types import header_stamp_ns, typestore
    store = typestore()
    camera_topic = camera_topic or f'/carla/{role}/rgb_front/image'
    control_topic = control_topic or f'/carla/{role}/vehicle_control_cmd'
    debug_topic = debug_topic or f'/{role}/driver/debug/frame_stack'
    end_topic = f'/av_td3/{role}/episode_end'
    run = RunData()
    for bag in bags:
        commands = {}  # the first command per stamp of this bag; later bags override
        with Reader(bag) as reader:
            wanted = [c for c in reader.connections
                      if c.topic in (camera_topic, control_topic, debug_topic, end_topic)]
            for conn, t_ns, raw in reader.messages(connections=wanted):
                if conn.topic == camera_topic:
                    run.frames.append(header_stamp_ns(raw))
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    try:
                        run.gray_frames.append((run.frames[-1],
                                                to_gray(ImageView.from_msg(msg))))
                    except ImageFormatError:
                        pass
                elif conn.topic == control_topic:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    commands.setdefault(header_stamp_ns(raw), Command(t_ns, float(msg.steer),
                                                       float(msg.throttle), float(msg.brake)))
                elif conn.topic == debug_topic:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    pixels = np.asarray(msg.data, np.uint8)[:msg.height * msg.step]
                    pixels = pixels.reshape(msg.height, msg.step)[:, :msg.width]
                    run.stacks.append((header_stamp_ns(raw), pixels.copy()))
                else:
                    run.episode_ends.append(parse_episode_end(
                        store.deserialize_cdr(raw, conn.msgtype).data))
        run.commands.update(commands)
    if run.stacks:
        run.gray_frames = []
    return run


def _figure(*args, **kwargs):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt, plt.subplots(*args, **kwargs)


def plot_controls(run: RunData, path: str | Path) -> dict[str, int]:
    """Plot steer/throttle/brake over the camera timeline; return the plotted counts."""
    timeline = run.frames if run.frames else sorted(run.commands)
    if not timeline:
        raise ValueError('no camera frames and no control commands to plot')
    origin = min(timeline)
    answered = [s for s in timeline if s in run.commands]
    missing = [s for s in timeline if s not in run.commands]
    x = np.array([(s - origin) / 1e9 for s in answered])
    plt, (fig, axes) = _figure(3, 1, sharex=True, figsize=(10, 6.5))
    names = ('steer', 'throttle', 'brake')
    limits = ((-1.05, 1.05), (-0.05, 1.05), (-0.05, 1.05))
    colors = ('tab:blue', 'tab:green', 'tab:red')
    for ax, name, limit, color in zip(axes, names, limits, colors, strict=True):
        y = np.array([getattr(run.commands[s], name) for s in answered])
        ax.step(x, y, where='post', color=color, linewidth=1.0)
        ax.plot(x, y, '.', color=color, markersize=3)
        if missing:
            ax.plot([(s - origin) / 1e9 for s in missing], [limit[0] + 0.05] * len(missing),
                    'x', color='red', markersize=6, label='frame without command')
        ax.set_ylim(*limit)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    if missing:
        axes[0].legend(loc='upper right', fontsize=8)
    axes[-1].set_xlabel('camera stamp - first frame (s)')
    fig.suptitle(f'{len(timeline)} frames, {len(answered)} with a command, '
                 f'{len(missing)} without')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {'frames': len(timeline), 'commands': len(answered), 'missing': len(missing)}


def plot_contact_sheet(run: RunData, path: str | Path, max_stacks: int = 16) -> int:
    """Draw up to `max_stacks` frame stacks (or grey frames) and their commands; count them."""
    items = run.stacks or run.gray_frames
    if not items:
        raise ValueError('no debug frame stacks and no camera frames to show')
    picks = np.unique(np.linspace(0, len(items) - 1, min(max_stacks, len(items))).astype(int))
    origin = min(run.frames) if run.frames else items[0][0]
    columns = 2 if run.stacks else 4
    rows = math.ceil(len(picks) / columns)
    aspect = items[0][1].shape[1] / items[0][1].shape[0]
    plt, (fig, axes) = _figure(rows, columns, squeeze=False,
                               figsize=(columns * min(1.6 * aspect, 8.0), rows * 2.0))
    for ax in axes.ravel():
        ax.axis('off')
    for ax, index in zip(axes.ravel()[:len(picks)], picks, strict=True):
        stamp, pixels = items[index]
        ax.imshow(pixels, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
        if run.stacks:  # square frames side by side: mark where one ends
            side = pixels.shape[0]
            for edge in range(side, pixels.shape[1], side):
                ax.axvline(edge - 0.5, color='tab:orange', linewidth=0.8)
        command = run.commands.get(stamp)
        text = (f'steer {command.steer:+.2f} thr {command.throttle:.2f} '
                f'brk {command.brake:.2f}' if command else 'no command')
        ax.set_title(f't={(stamp - origin) / 1e9:.2f}s  {text}', fontsize=7)
    kind = 'frame stacks (oldest left)' if run.stacks else 'grey frames'
    fig.suptitle(f'{len(picks)} of {len(items)} {kind}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(picks)


def plot_returns(episodes: list[dict], path: str | Path) -> int:
    """Plot episode returns (and lengths when known); return the number of episodes."""
    if not episodes:
        raise ValueError('no episodes to plot')
    x = np.array([e['episode'] if e.get('episode') is not None else i
                  for i, e in enumerate(episodes)])
    returns = np.array([e['return'] for e in episodes], float)
    plt, (fig, ax) = _figure(figsize=(9, 4.5))
    ax.plot(x, returns, 'o-', markersize=3, linewidth=1.0, label='return')
    window = min(10, len(returns) // 2)  # a moving mean needs a few points to show a trend
    if window > 1:
        smooth = np.convolve(returns, np.ones(window) / window, mode='valid')
        ax.plot(x[window - 1:], smooth, linewidth=2.0, label=f'mean of {window}')
    ax.set_xlabel('episode')
    ax.set_ylabel('return')
    ax.grid(True, alpha=0.3)
    lengths = [e.get('length') for e in episodes]
    if all(length is not None for length in lengths):
        twin = ax.twinx()
        twin.bar(x, lengths, alpha=0.15, color='gray', label='length (steps)')
        twin.set_ylabel('length (steps)')
    ax.legend(loc='upper left', fontsize=8)
    ax.set_title(f'{len(episodes)} episodes')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(episodes)


def plot_all(output: str | Path, bags=(), episodes_file: str | Path | None = None,
             role: str = 'ego_vehicle', max_stacks: int = 16) -> dict[str, object]:
    """Write every plot the inputs allow into `output`; return {file name: counts}."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = {}
    run = read_run(bags, role) if bags else RunData()
    if run.frames or run.commands:
        written['controls.png'] = plot_controls(run, output / 'controls.png')
    if run.stacks or run.gray_frames:
        written['frame_stacks.png'] = plot_contact_sheet(run, output / 'frame_stacks.png',
                                                         max_stacks)
    episodes = read_episodes(episodes_file) if episodes_file else episodes_from_bag(run)
    if episodes:
        written['returns.png'] = plot_returns(episodes, output / 'returns.png')
    return written


def main(args=None):
    """Run plot_run from the command line."""
    parser = argparse.ArgumentParser(prog='plot_run', description=__doc__.split('\n')[0])
    parser.add_argument('--bag', action='append', type=Path, default=[],
                        help='bag directory (repeatable; merged)')
    parser.add_argument('--log-dir', type=Path, help=f'trainer log directory with '
                        f'{EPISODES_FILE}')
    parser.add_argument('--episodes', type=Path, help='episodes .jsonl or .csv file')
    parser.add_argument('-o', '--output', type=Path, required=True, help='directory for PNGs')
    parser.add_argument('--role', default='ego_vehicle', help='CARLA role name')
    parser.add_argument('--max-stacks', type=int, default=16,
                        help='frame stacks on the contact sheet')
    parsed = parser.parse_args(sys.argv[1:] if args is None else list(args)[1:])
    episodes = parsed.episodes
    if episodes is None and parsed.log_dir is not None:
        candidates = [parsed.log_dir / EPISODES_FILE, parsed.log_dir / 'episodes.csv']
        episodes = next((c for c in candidates if c.is_file()), None)
        if episodes is None:
            parser.error(f'no {EPISODES_FILE} (or episodes.csv) in {parsed.log_dir}')
    if not parsed.bag and episodes is None:
        parser.error('give --bag and/or --log-dir/--episodes')
    written = plot_all(parsed.output, parsed.bag, episodes, parsed.role, parsed.max_stacks)
    for name, counts in written.items():
        print(f'{parsed.output / name}: {counts}')
    if not written:
        sys.exit('plot_run: nothing to plot in the inputs')


if __name__ == '__main__':
    main()
