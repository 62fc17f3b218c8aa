"""Turn camera frames (as sensor_msgs/Image carries them) into the policy's 84x84 inputs.

The numbers follow av_td3_system: drop alpha, RGB -> grey with OpenCV's RGB2GRAY weights,
`cv2.resize(..., (84, 84), INTER_AREA)`, `/255`, then `(x - 0.5) / 0.5` -> [-1, 1]. The grey
84x84 frame stays uint8 until `scale_frames`, so the replay buffer can store it in one byte
per pixel and the learner applies the very same scaling.

Nothing here imports rclpy: `ImageView.from_msg` reads any object with the sensor_msgs/Image
field names (an rclpy message, a rosbags message, a test double).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from av_td3_ros.validation import check_at_least, check_choice

# encoding -> (channels, cv2 conversion to grey or None for mono8).
# For bgra8/bgr8 the direct BGR*2GRAY conversion is bit-identical to av_td3_system's
# "drop alpha, BGR -> RGB, RGB2GRAY" path (same weights, same fixed-point code; tested).
ENCODINGS = {
    'bgra8': (4, cv2.COLOR_BGRA2GRAY),
    'bgr8': (3, cv2.COLOR_BGR2GRAY),
    'rgba8': (4, cv2.COLOR_RGBA2GRAY),
    'rgb8': (3, cv2.COLOR_RGB2GRAY),
    'mono8': (1, None),
}
SCALES = ('zero_centered', 'unit')
STACK_FILLS = ('zero', 'repeat_first')


class ImageFormatError(ValueError):
    """A camera frame that cannot be decoded (encoding, size or data length is wrong)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How camera frames become policy input (stored in every checkpoint)."""

    image_size: int = 84
    """Side of the square grey frame fed to the CNN."""
    frame_stack: int = 4
    """Frames per observation, oldest first."""
    scale: str = 'zero_centered'
    """zero_centered: (x/255 - 0.5)/0.5 in [-1, 1] (av_td3_system); unit: x/255 in [0, 1]."""
    stack_fill: str = 'zero'
    """Stack content at episode start: zero (0.0 after scaling, as the original) or
    repeat_first (copies of the first frame)."""

    def __post_init__(self):
        """Validate the choices, naming the bad value."""
        check_choice('scale', self.scale, SCALES)
        check_choice('stack_fill', self.stack_fill, STACK_FILLS)
        check_at_least(self, 1, 'image_size', 'frame_stack')

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoint metadata)."""
        return asdict(self)


@dataclass(frozen=True)
class ImageView:
    """The fields of a sensor_msgs/Image needed to decode it, without copying the data."""

    encoding: str
    height: int
    width: int
    step: int
    data: object  # bytes-like or array.array / memoryview / numpy uint8 array

    @classmethod
    def from_msg(cls, msg) -> ImageView:
        """Wrap an Image message (rclpy or rosbags) without copying its pixels."""
        return cls(msg.encoding, int(msg.height), int(msg.width), int(msg.step), msg.data)


def image_pixels(image: ImageView) -> np.ndarray:
    """Return a zero-copy (H, W, C) uint8 view of the frame; raise ImageFormatError if bad."""
    if image.encoding not in ENCODINGS:
        raise ImageFormatError(f'unsupported encoding {image.encoding!r}; '
                               f'supported: {", ".join(ENCODINGS)}')
    channels, _ = ENCODINGS[image.encoding]
    if image.height <= 0 or image.width <= 0:
        raise ImageFormatError(f'empty image: {image.width}x{image.height}')
    row_bytes = image.width * channels
    if image.step < row_bytes:
        raise ImageFormatError(f'step {image.step} < width*channels {row_bytes} '
                               f'for {image.encoding}')
    flat = np.frombuffer(image.data, dtype=np.uint8)
    if flat.size != image.height * image.step:
        raise ImageFormatError(f'data length {flat.size} != height*step '
                               f'{image.height}*{image.step} = {image.height * image.step}')
    rows = flat.reshape(image.height, image.step)
    # Slicing off row padding keeps a strided view; OpenCV reads it without a copy.
    return rows[:, :row_bytes].reshape(image.height, image.width, channels)


def gray_from_pixels(pixels: np.ndarray, encoding: str, size: int = 84) -> np.ndarray:
    """Turn an (H, W, C) view from `image_pixels` into a (size, size) uint8 grey image."""
    _, conversion = ENCODINGS[encoding]
    gray = pixels[:, :, 0] if conversion is None else cv2.cvtColor(pixels, conversion)
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def to_gray(image: ImageView, size: int = 84) -> np.ndarray:
    """Decode a frame to a (size, size) uint8 grey image (grey, then INTER_AREA resize)."""
    return gray_from_pixels(image_pixels(image), image.encoding, size)


def scale_frames(frames_u8: np.ndarray, scale: str = 'zero_centered',
                 out: np.ndarray | None = None) -> np.ndarray:
    """Map uint8 grey frames to float32: [-1, 1] (zero_centered) or [0, 1] (unit)."""
    out = np.empty(frames_u8.shape, np.float32) if out is None else out
    np.divide(frames_u8, np.float32(255.0), out=out, dtype=np.float32)
    if scale == 'zero_centered':
        out -= np.float32(0.5)
        out /= np.float32(0.5)
    else:
        check_choice('scale', scale, SCALES)
    return out


def preprocess(image: ImageView, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Return one (size, size) float32 policy frame for a camera image."""
    return scale_frames(to_gray(image, config.image_size), config.scale)


class FrameStack:
    """The last `frame_stack` preprocessed frames, oldest first, in a preallocated array."""

    def __init__(self, config: PreprocessConfig = PreprocessConfig()):
        """Allocate the stack and start an episode."""
        self.config = config
        self.frames = np.zeros((config.frame_stack, config.image_size, config.image_size),
                               np.float32)
        self.count = 0
        self.reset()

    def reset(self):
        """Start a new episode: zero fill, or remember to repeat the next frame."""
        self.frames.fill(0.0)
        self.count = 0

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Append a float32 frame and return the stack (a view; copy it to keep it)."""
        if self.count == 0 and self.config.stack_fill == 'repeat_first':
            self.frames[:] = frame
        else:
            # Shift in place; 4x84x84 float32 is 113 kB, cheaper than any bookkeeping.
            self.frames[:-1] = self.frames[1:]
            self.frames[-1] = frame
        self.count += 1
        return self.frames
