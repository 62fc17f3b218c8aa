"""Tests for camera-frame preprocessing and the frame stack (no ROS needed)."""
import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from av_td3_ros.policy.preprocessing import (
    FrameStack,
    ImageFormatError,
    ImageView,
    PreprocessConfig,
    image_pixels,
    preprocess,
    scale_frames,
    to_gray,
)

CHANNELS = {'bgra8': 4, 'bgr8': 3, 'rgba8': 4, 'rgb8': 3, 'mono8': 1}


def scene_rgb(height, width, seed=0):
    """Return a random but smooth-ish RGB scene (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # Add a gradient so the resize has structure to average, not only noise.
    ramp = np.linspace(0, 60, width, dtype=np.float64)[None, :, None]
    return np.clip(base.astype(np.float64) * 0.75 + ramp, 0, 255).astype(np.uint8)


def encode(rgb, encoding, alpha_seed=1):
    """Return the (H, W, C) pixel array of `rgb` in a sensor_msgs/Image encoding."""
    height, width, _ = rgb.shape
    alpha = np.random.default_rng(alpha_seed).integers(0, 256, (height, width, 1), np.uint8)
    if encoding == 'rgb8':
        return rgb.copy()
    if encoding == 'bgr8':
        return rgb[:, :, ::-1].copy()
    if encoding == 'rgba8':
        return np.concatenate([rgb, alpha], axis=2)
    if encoding == 'bgra8':
        return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    if encoding == 'mono8':
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    raise AssertionError(encoding)


def view_of(pixels, encoding, padding=0, pad_value=None):
    """Wrap (H, W, C) pixels as an ImageView, optionally with `padding` bytes per row."""
    height, width, channels = pixels.shape
    step = width * channels + padding
    rows = np.empty((height, step), np.uint8)
    if padding:
        rng = np.random.default_rng(99)
        rows[:, width * channels:] = (rng.integers(0, 256, (height, padding), np.uint8)
                                      if pad_value is None else pad_value)
    rows[:, :width * channels] = pixels.reshape(height, width * channels)
    return ImageView(encoding, height, width, step, rows.tobytes())


def reference_bgra(bgra):
    """Preprocess a BGRA frame the way av_td3_system does it, step by step, in float64."""
    bgr = bgra[:, :, :3]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    resized = cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA)
    scaled = resized.astype(np.float64) / 255.0
    return (scaled - 0.5) / 0.5


# --- exact numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize('height,width', [(600, 800), (144, 256), (84, 84), (143, 257),
                                          (61, 97)])
def test_preprocess_matches_av_td3_system_reference(height, width):
    bgra = encode(scene_rgb(height, width, seed=height), 'bgra8')
    out = preprocess(view_of(bgra, 'bgra8'))
    assert out.shape == (84, 84)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_bgra(bgra), rtol=0, atol=1e-6)


def test_uniform_frame_of_51_gives_exact_value_everywhere():
    bgra = np.full((600, 800, 4), 51, np.uint8)
    out = preprocess(view_of(bgra, 'bgra8'))
    expected = (51 / 255 - 0.5) / 0.5  # -0.6
    np.testing.assert_allclose(out, np.full((84, 84), expected), rtol=0, atol=1e-6)


def test_grey_value_uses_rgb2gray_weights():
    # R=10, G=200, B=30: 0.299*10 + 0.587*200 + 0.114*30 = 123.81 -> 124 as uint8.
    rgb = np.empty((90, 120, 3), np.uint8)
    rgb[...] = (10, 200, 30)
    bgra = encode(rgb, 'bgra8')
    grey = to_gray(view_of(bgra, 'bgra8'))
    assert (grey == 124).all()
    out = preprocess(view_of(bgra, 'bgra8'))
    np.testing.assert_allclose(out, (124 / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)


def test_red_and_blue_are_not_swapped_for_bgra():
    # Pure red in the scene must get the red weight (0.299*255 = 76.2), not blue's (29.1).
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 255
    assert (to_gray(view_of(encode(rgb, 'bgra8'), 'bgra8')) == 76).all()
    assert (to_gray(view_of(encode(rgb, 'rgb8'), 'rgb8')) == 76).all()


def test_unit_scale_is_x_over_255_in_0_1():
    rgb = scene_rgb(120, 160, seed=3)
    rgb[0, 0] = 0
    rgb[-1, -1] = 255
    view = view_of(encode(rgb, 'rgb8'), 'rgb8')
    unit = preprocess(view, PreprocessConfig(scale='unit'))
    assert unit.min() >= 0.0 and unit.max() <= 1.0
    np.testing.assert_allclose(unit, to_gray(view) / 255.0, rtol=0, atol=1e-6)
    white = view_of(np.full((4, 4, 1), 255, np.uint8), 'mono8')
    black = view_of(np.zeros((4, 4, 1), np.uint8), 'mono8')
    assert (preprocess(white, PreprocessConfig(scale='unit')) == 1.0).all()
    assert (preprocess(black, PreprocessConfig(scale='unit')) == 0.0).all()
    assert (preprocess(white) == 1.0).all()
    assert (preprocess(black) == -1.0).all()


def test_scale_frames_writes_into_out_and_rejects_unknown_scale():
    frames = np.array([[0, 51, 255]], np.uint8)
    out = np.empty((1, 3), np.float32)
    result = scale_frames(frames, 'zero_centered', out=out)
    assert result is out
    np.testing.assert_allclose(out, [[-1.0, -0.6, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match='scale'):
        scale_frames(frames, 'bogus')


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="'half'"):
        PreprocessConfig(scale='half')
    with pytest.raises(ValueError, match="'copy'"):
        PreprocessConfig(stack_fill='copy')
    with pytest.raises(ValueError, match='frame_stack'):
        PreprocessConfig(frame_stack=0)


# --- encodings, sizes, padding ------------------------------------------------------------------

@pytest.mark.parametrize('height,width', [(600, 800), (143, 257), (1, 1), (2, 3), (84, 84)])
def test_all_encodings_give_the_same_grey_image(height, width):
    rgb = scene_rgb(height, width, seed=width)
    grey = {enc: to_gray(view_of(encode(rgb, enc), enc)) for enc in CHANNELS}
    for enc, image in grey.items():
        assert image.shape == (84, 84) and image.dtype == np.uint8, enc
        np.testing.assert_array_equal(image, grey['bgra8'], err_msg=enc)


def test_alpha_channel_is_ignored():
    rgb = scene_rgb(60, 80, seed=5)
    a = to_gray(view_of(encode(rgb, 'bgra8', alpha_seed=1), 'bgra8'))
    b = to_gray(view_of(encode(rgb, 'bgra8', alpha_seed=2), 'bgra8'))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('encoding', list(CHANNELS))
@pytest.mark.parametrize('padding', [1, 3, 64])
def test_row_padding_garbage_does_not_change_the_result(encoding, padding):
    pixels = encode(scene_rgb(75, 101, seed=11), encoding)
    packed = preprocess(view_of(pixels, encoding))
    noisy = preprocess(view_of(pixels, encoding, padding=padding))
    bright = preprocess(view_of(pixels, encoding, padding=padding, pad_value=255))
    np.testing.assert_array_equal(noisy, packed)
    np.testing.assert_array_equal(bright, packed)


def test_image_pixels_returns_the_unpadded_layout():
    pixels = encode(scene_rgb(7, 9, seed=2), 'bgra8')
    view = view_of(pixels, 'bgra8', padding=5)
    out = image_pixels(view)
    assert out.shape == (7, 9, 4)
    np.testing.assert_array_equal(out, pixels)


# --- zero copy ----------------------------------------------------------------------------------

def test_image_pixels_is_a_view_of_a_numpy_buffer():
    buffer = np.arange(6 * 10 * 4, dtype=np.uint8)
    view = ImageView('bgra8', 6, 10, 40, buffer)
    pixels = image_pixels(view)
    assert np.shares_memory(pixels, buffer)


def test_image_pixels_is_a_view_of_a_bytearray_with_padding():
    buffer = bytearray(5 * 36)  # 8 px * 4 ch = 32 bytes per row + 4 padding
    pixels = image_pixels(ImageView('rgba8', 5, 8, 36, buffer))
    assert np.shares_memory(pixels, np.frombuffer(buffer, np.uint8))
    buffer[36 + 4 * 2 + 1] = 200  # row 1, pixel 2, channel 1 (G)
    assert pixels[1, 2, 1] == 200


def test_image_pixels_is_a_view_of_bytes_and_array_array():
    raw = bytes(range(256)) * 3  # 16 x 16 mono8 ... 768 bytes = 12 rows of 64
    pixels = image_pixels(ImageView('mono8', 12, 64, 64, raw))
    assert np.shares_memory(pixels, np.frombuffer(raw, np.uint8))
    # rclpy hands uint8[] fields over as array.array('B').
    arr = array.array('B', raw)
    pixels = image_pixels(ImageView('mono8', 12, 64, 64, arr))
    assert np.shares_memory(pixels, np.frombuffer(arr, np.uint8))
    arr[65] = 7
    assert pixels[1, 1, 0] == 7


def test_image_view_from_msg_keeps_the_data_object():
    data = bytearray(2 * 3 * 3)
    msg = SimpleNamespace(encoding='rgb8', height=2, width=3, step=9, data=data)
    view = ImageView.from_msg(msg)
    assert (view.encoding, view.height, view.width, view.step) == ('rgb8', 2, 3, 9)
    assert view.data is data


# --- errors -------------------------------------------------------------------------------------

def test_unknown_encoding_is_refused_naming_it():
    view = ImageView('yuv422', 2, 2, 4, bytes(8))
    with pytest.raises(ImageFormatError, match="unsupported encoding 'yuv422'") as info:
        preprocess(view)
    assert 'bgra8' in str(info.value)  # lists what is supported


def test_data_length_mismatch_is_refused():
    view = ImageView('bgra8', 600, 800, 3200, bytes(600 * 3200 - 1))
    with pytest.raises(ImageFormatError, match='data length 1919999 != height\\*step'):
        preprocess(view)
    too_long = ImageView('bgra8', 600, 800, 3200, bytes(600 * 3200 + 4))
    with pytest.raises(ImageFormatError, match='data length'):
        preprocess(too_long)


@pytest.mark.parametrize('height,width', [(0, 800), (600, 0), (0, 0), (-1, 4)])
def test_empty_image_is_refused(height, width):
    view = ImageView('bgra8', height, width, max(width, 0) * 4, b'')
    with pytest.raises(ImageFormatError, match='empty image'):
        preprocess(view)


def test_step_smaller_than_a_row_is_refused():
    view = ImageView('bgra8', 600, 800, 800 * 3, bytes(600 * 800 * 3))
    with pytest.raises(ImageFormatError, match='step 2400 < width\\*channels 3200'):
        preprocess(view)


def test_image_format_error_is_a_value_error():
    assert issubclass(ImageFormatError, ValueError)


# --- frame stack --------------------------------------------------------------------------------

def frame(value):
    return np.full((84, 84), value, np.float32)


def stack_values(stack):
    """Return the constant value of each frame in the stack, oldest first."""
    frames = stack.frames
    assert all((f == f.flat[0]).all() for f in frames)
    return [float(f.flat[0]) for f in frames]


def test_frame_stack_zero_fill_keeps_the_last_four_oldest_first():
    stack = FrameStack()
    assert stack.frames.shape == (4, 84, 84) and stack.frames.dtype == np.float32
    assert stack_values(stack) == [0, 0, 0, 0]
    stack.push(frame(1))
    assert stack_values(stack) == [0, 0, 0, 1]
    for value in (2, 3, 4):
        stack.push(frame(value))
    assert stack_values(stack) == [1, 2, 3, 4]
    out = stack.push(frame(5))
    assert stack_values(stack) == [2, 3, 4, 5]
    np.testing.assert_array_equal(out, stack.frames)


def test_frame_stack_copies_pushed_frames():
    stack = FrameStack()
    buffer = frame(1)
    stack.push(buffer)
    buffer[...] = 9  # the pipeline reuses one frame buffer for every frame
    assert stack_values(stack) == [0, 0, 0, 1]


def test_frame_stack_repeat_first():
    stack = FrameStack(PreprocessConfig(stack_fill='repeat_first'))
    assert stack_values(stack) == [0, 0, 0, 0]
    stack.push(frame(7))
    assert stack_values(stack) == [7, 7, 7, 7]
    stack.push(frame(8))
    assert stack_values(stack) == [7, 7, 7, 8]


@pytest.mark.parametrize('fill', ['zero', 'repeat_first'])
def test_frame_stack_reset_between_episodes(fill):
    stack = FrameStack(PreprocessConfig(stack_fill=fill))
    for value in (1, 2, 3, 4, 5):
        stack.push(frame(value))
    stack.reset()
    assert stack_values(stack) == [0, 0, 0, 0]
    stack.push(frame(-0.5))
    expected = [0, 0, 0, -0.5] if fill == 'zero' else [-0.5] * 4
    assert stack_values(stack) == expected


def test_frame_stack_follows_the_configured_size():
    stack = FrameStack(PreprocessConfig(image_size=64, frame_stack=2))
    assert stack.frames.shape == (2, 64, 64)
    stack.push(np.full((64, 64), 1, np.float32))
    stack.push(np.full((64, 64), 2, np.float32))
    stack.push(np.full((64, 64), 3, np.float32))
    assert stack_values(stack) == [2, 3]
