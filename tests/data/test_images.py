import io

import numpy as np
import pytest
from PIL import Image

from labelsieve.data import images


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _decode(data: bytes, size: int = 4, channels: int = 1, max_pixels: int = 10_000) -> np.ndarray:
    return images.decode_image(data, size=size, channels=channels, max_pixels=max_pixels)


def test_decode_image_grayscale_png_kept_exactly():
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = _decode(_encode(Image.fromarray(pixels, mode="L")))
    assert out.shape == (1, 4, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], pixels)


def test_decode_image_rgb_to_three_channels_in_chw_order():
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 2] = 200, 50
    out = _decode(_encode(Image.fromarray(pixels, mode="RGB")), channels=3)
    assert out.shape == (3, 4, 4)
    assert (out[0] == 200).all() and (out[1] == 0).all() and (out[2] == 50).all()


def test_decode_image_rgb_to_grayscale_uses_luma():
    pixels = np.full((4, 4, 3), (255, 0, 0), dtype=np.uint8)
    out = _decode(_encode(Image.fromarray(pixels, mode="RGB")))
    assert (out == 76).all()  # ITU-R 601-2 luma: 0.299 * 255 = 76.2


def test_decode_image_resize_shorter_side_then_centre_crop():
    # 8x4 (w x h) with distinct halves: scale by 1 (shorter side 4), crop columns 2..5.
    pixels = np.zeros((4, 8), dtype=np.uint8)
    pixels[:, :2], pixels[:, 2:6], pixels[:, 6:] = 10, 100, 250
    out = _decode(_encode(Image.fromarray(pixels, mode="L")))
    assert (out == 100).all()
    # Downscale 16x16 -> 4x4 of a constant image stays constant.
    assert (_decode(_encode(Image.new("L", (16, 32), 77))) == 77).all()


def test_decode_image_cmyk_jpeg_converted():
    out = _decode(_encode(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", quality=95), channels=3)
    assert out.shape == (3, 4, 4) and out.min() >= 250  # no ink is white


def test_decode_image_palette_with_alpha_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0  # palette entry 0 (black) is fully transparent
    data = _encode(image)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = _decode(data, channels=3)
    assert (out == 255).all()  # transparent black over white is white


def test_decode_image_16bit_scaled_not_clipped():
    pixels = np.full((4, 4), 32896, dtype=np.uint16)  # 32896 / 65535 * 255 = 128.0
    data = _encode(Image.fromarray(pixels))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert (_decode(data) == 128).all()


def test_decode_image_la_grayscale_with_alpha():
    image = Image.new("LA", (4, 4), (0, 0))  # fully transparent black
    assert (_decode(_encode(image)) == 255).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", images.EMPTY_FILE),
        (b"this is a text file, not an image\n", images.NOT_AN_IMAGE),
    ],
)
def test_decode_image_rejects_empty_and_non_image(data, reason):
    with pytest.raises(images.ImageRejected) as info:
        _decode(data)
    assert info.value.reason == reason
    with pytest.raises(images.ImageRejected) as again:
        _decode(data)
    assert again.value.detail == info.value.detail and " at 0x" not in info.value.detail  # reports repeat


def test_decode_image_rejects_truncated_png():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = _encode(Image.fromarray(noise, mode="L"))
    with pytest.raises(images.ImageRejected) as info:
        _decode(data[: len(data) // 2])
    assert info.value.reason == images.TRUNCATED


def test_decode_image_rejects_corrupt_png():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = bytearray(_encode(Image.fromarray(noise, mode="L")))
    start = data.index(b"IDAT") + 8
    data[start : start + 64] = bytes(64)  # pixel data no longer matches its CRC
    with pytest.raises(images.ImageRejected) as info:
        _decode(bytes(data))
    assert info.value.reason == images.CORRUPT


def test_decode_image_rejects_decompression_bomb_before_decoding():
    data = _encode(Image.new("L", (200, 200), 0))  # 40,000 px > max_pixels 10,000
    with pytest.raises(images.ImageRejected) as info:
        _decode(data)
    assert info.value.reason == images.DECOMPRESSION_BOMB


def test_resize_array_fast_path_and_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(images.resize_array(gray, size=8, channels=1)[0], gray)
    rgb = np.zeros((3, 8, 8), dtype=np.uint8)
    assert images.resize_array(rgb, size=4, channels=3).shape == (3, 4, 4)
