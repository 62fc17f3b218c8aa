"""Render a contact sheet of one MetaDrive episode: what the policy saw and what it commanded.

    python -m av_td3_ros.tools.drive_sheet \
        --checkpoint models/metadrive_camera_policy.safetensors --seed 50125 \
        --out docs/images/metadrive_drive.png

Runs one in-process episode (sim/metadrive_evaluation.py: the driver's own DrivingPipeline
drives) at the policy's 84x84 camera and tiles evenly spaced front-camera frames, from the
first step to the last, into one PNG. Each frame is upscaled and shows the command the policy
gave for it: a steer bar along the bottom (centre 0, right of centre steers right), a pedal
bar on the right (up from the middle: throttle, down: brake) and the step number.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from av_td3_ros.tools.demo import METADRIVE_POLICY, default_policy_path

CAMERA = (84, 84)
"""Width and height of the camera the MetaDrive student was trained at: the sheet shows
exactly what it sees, so there is no option for a larger one."""
STEER_COLOUR = (255, 200, 0)  # BGR: light blue
THROTTLE_COLOUR = (0, 200, 0)
BRAKE_COLOUR = (0, 0, 230)
BAR_BACKGROUND = (40, 40, 40)
TEXT_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class Frame:
    """One step's camera image (BGR) and the (steer, throttle, brake) the policy gave for it."""

    image: np.ndarray
    steer: float
    throttle: float
    brake: float
    step: int


def annotate(frame: Frame, scale: int = 3, bar: int = 8) -> np.ndarray:
    """Return the frame upscaled `scale` times with its steer and pedal bars and step drawn."""
    height, width = frame.image.shape[:2]
    # Nearest neighbour keeps the policy's pixels visible as pixels.
    image = cv2.resize(frame.image, (width * scale, height * scale),
                       interpolation=cv2.INTER_NEAREST)
    out_h, out_w = image.shape[:2]
    # Steer: a bar along the bottom, filled from the centre towards the side it steers to.
    steer_w = out_w - bar
    top = out_h - bar
    cv2.rectangle(image, (0, top), (steer_w - 1, out_h - 1), BAR_BACKGROUND, -1)
    centre = steer_w // 2
    reach = int(round(np.clip(frame.steer, -1.0, 1.0) * (steer_w // 2 - 1)))
    if reach:
        cv2.rectangle(image, (min(centre, centre + reach), top),
                      (max(centre, centre + reach), out_h - 1), STEER_COLOUR, -1)
    cv2.line(image, (centre, top), (centre, out_h - 1), TEXT_COLOUR, 1)
    # Pedals: a bar on the right, throttle up from the middle, brake down from it.
    left = out_w - bar
    cv2.rectangle(image, (left, 0), (out_w - 1, out_h - 1), BAR_BACKGROUND, -1)
    middle = out_h // 2
    half = out_h // 2 - 1
    throttle = int(round(np.clip(frame.throttle, 0.0, 1.0) * half))
    brake = int(round(np.clip(frame.brake, 0.0, 1.0) * half))
    if throttle:
        cv2.rectangle(image, (left, middle - throttle), (out_w - 1, middle), THROTTLE_COLOUR,
                      -1)
    if brake:
        cv2.rectangle(image, (left, middle), (out_w - 1, middle + brake), BRAKE_COLOUR, -1)
    cv2.line(image, (left, middle), (out_w - 1, middle), TEXT_COLOUR, 1)
    # A dark box keeps the step number readable on MetaDrive's light grey sky.
    (text_w, text_h), _ = cv2.getTextSize(str(frame.step), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(image, (0, 0), (text_w + 7, text_h + 8), BAR_BACKGROUND, -1)
    cv2.putText(image, str(frame.step), (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                TEXT_COLOUR, 1, cv2.LINE_AA)
    return image


def pick(count: int, tiles: int) -> list[int]:
    """Return up to `tiles` indices spread evenly over range(count), first and last included."""
    if count <= tiles:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, tiles)})


def contact_sheet(frames: list[Frame], columns: int = 4, title: str = '',
                  scale: int = 3) -> np.ndarray:
    """Return the annotated frames tiled `columns` wide under a `title` strip (BGR uint8)."""
    if not frames:
        raise ValueError('no frames to tile')
    tiles = [annotate(frame, scale) for frame in frames]
    tile_h, tile_w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    gap = 2
    strip = 24 if title else 0
    sheet = np.zeros((strip + rows * (tile_h + gap) - gap, columns * (tile_w + gap) - gap, 3),
                     np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        y = strip + row * (tile_h + gap)
        x = column * (tile_w + gap)
        sheet[y:y + tile_h, x:x + tile_w] = tile
    if title:
        cv2.putText(sheet, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, TEXT_COLOUR, 1,
                    cv2.LINE_AA)
    return sheet


def record_episode(checkpoint: str, seed: int, args) -> tuple[list[Frame], object]:
    """Drive scenario `seed` with the checkpoint; return every step's Frame and the result."""
    import torch

    from av_td3_ros.driving.pipeline import DrivingPipeline
    from av_td3_ros.policy.checkpoint import PolicySpec, load_policy
    from av_td3_ros.policy.inference import PolicyRunner
    from av_td3_ros.sim.metadrive_client import MetaDriveClient, MetaDriveConfig
    from av_td3_ros.sim.metadrive_evaluation import policy_driver, run_episode

    policy, metadata = load_policy(checkpoint)
    drive = policy_driver(DrivingPipeline(PolicySpec.from_metadata(metadata),
                                          PolicyRunner(policy, torch.device('cpu'))))
    frames: list[Frame] = []

    def recording(state, route):
        steer, throttle, brake = drive(state, route)
        frames.append(Frame(state.image.copy(), steer, throttle, brake, state.steps))
        return steer, throttle, brake

    config = MetaDriveConfig(image_width=CAMERA[0], image_height=CAMERA[1],
                             traffic_density=args.traffic_density, map=args.map,
                             max_episode_steps=args.max_steps, start_seed=seed, scenarios=1)
    client = MetaDriveClient(config)
    try:
        with torch.inference_mode():
            result = run_episode(client, seed, recording)
    finally:
        client.close()
    return frames, result


def main(argv=None) -> int:
    """Drive one episode, write the contact sheet and print the episode's line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default='',
                        help='policy .safetensors (default: the shipped MetaDrive student, '
                             f'models/{METADRIVE_POLICY})')
    parser.add_argument('--seed', type=int, default=50125,
                        help="MetaDrive scenario seed (the README picture's)")
    parser.add_argument('--out', default='docs/images/metadrive_drive.png', help='PNG to write')
    parser.add_argument('--tiles', type=int, default=16, help='frames on the sheet')
    parser.add_argument('--columns', type=int, default=4)
    parser.add_argument('--scale', type=int, default=3, help='upscale factor of each frame')
    parser.add_argument('--traffic-density', type=float, default=0.1)
    parser.add_argument('--map', default='3',
                        help="a number of blocks ('3') or a block string ('SCrRX')")
    parser.add_argument('--max-steps', type=int, default=1000, help='time limit in steps')
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or str(default_policy_path(METADRIVE_POLICY))
    if not Path(checkpoint).is_file():
        print(f'drive_sheet: no checkpoint {checkpoint}', file=sys.stderr)
        return 2
    frames, result = record_episode(checkpoint, args.seed, args)
    print(result.line(), flush=True)
    shown = [frames[i] for i in pick(len(frames), args.tiles)]
    sheet = contact_sheet(shown, args.columns, scale=args.scale,
                          title=f'{result.line()}   bars: steer (bottom), throttle up / '
                                'brake down (right)')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(args.out, sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        print(f'drive_sheet: could not write {args.out}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}: {sheet.shape[1]}x{sheet.shape[0]}, '
          f'{Path(args.out).stat().st_size // 1024} KB', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
