"""Decode untrusted image bytes into fixed-size uint8 arrays, or say exactly why not.

Resize rule: scale so the shorter side equals `size` (bilinear, antialiased), then crop the centre
`size` x `size` square. Alpha is composited onto white; CMYK, palette and 16-bit images are converted;
EXIF orientation is applied. Output layout is (C, H, W), C = 1 (grayscale) or 3 (RGB).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons a sample is skipped; ingest_report.json counts them under these names.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
DECOMPRESSION_BOMB = "decompression_bomb"


class ImageRejected(Exception):
    """An input that cannot become a sample. `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def decode_image(data: bytes, *, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes into a (channels, size, size) uint8 array.

    Raises:
        ImageRejected: empty, not an image, truncated, corrupt, or over `max_pixels` (bomb).
    """
    if not data:
        raise ImageRejected(EMPTY_FILE, "file has zero bytes")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between max_pixels and 2x; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(DECOMPRESSION_BOMB, f"{width}x{height} exceeds {max_pixels} pixels")
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError as err:  # its text names the BytesIO's address: not the same twice
        raise ImageRejected(NOT_AN_IMAGE, "Pillow recognises no image format in it") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(DECOMPRESSION_BOMB, str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err)
        reason = TRUNCATED if "truncated" in text.lower() or isinstance(err, EOFError) else CORRUPT
        raise ImageRejected(reason, text or type(err).__name__) from err
    return to_array(image, size=size, channels=channels)


def to_array(image: Image.Image, *, size: int, channels: int) -> np.ndarray:
    """Convert a loaded PIL image to (channels, size, size) uint8 with the documented resize rule."""
    image = ImageOps.exif_transpose(image)
    image = _to_8bit_mode(image, channels)
    if image.size != (size, size):
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # -> (C, H, W)
    return np.ascontiguousarray(array)


def resize_array(pixels: np.ndarray, *, size: int, channels: int) -> np.ndarray:
    """Bring an (H, W) or (C, H, W) uint8 array to (channels, size, size) with the same rule."""
    if pixels.ndim == 2 and channels == 1 and pixels.shape == (size, size):
        return np.ascontiguousarray(pixels[None])
    mode = "L" if pixels.ndim == 2 else "RGB"
    image = Image.fromarray(pixels if pixels.ndim == 2 else pixels.transpose(1, 2, 0), mode=mode)
    return to_array(image, size=size, channels=channels)


def _to_8bit_mode(image: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert("L") clips 16-bit values instead of scaling them; scale by the type's range.
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "I":
            top = 65535.0 if peak > 255 else 255.0
        else:  # "F": floats in [0, 1] or [0, 255]
            top = 1.0 if peak <= 1.0 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(target)
