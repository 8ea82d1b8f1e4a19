"""Image decoding and validation with Pillow, and preprocessing to the base model's input."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import AutlearnError

PREPROCESS_RESAMPLE = Image.BILINEAR
# The decoders Pillow may use, matching the suffixes ingestion accepts. Pillow picks a decoder by content, not by
# name: without this list a file named .png could reach any of its ~40 plugins (EPS even starts Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")


def decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode and fully load an image; raise bad_input with a reason a person can act on."""
    if not data:
        raise AutlearnError("bad_input", f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = probe.size
            if w * h > max_pixels:
                raise AutlearnError("bad_input", f"{name}: {w}x{h} pixels is over the limit of {max_pixels} "
                                                 "(possible decompression bomb)")
            probe.verify()  # structure and checksums
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            img.load()  # actually decode: catches truncated data
    except AutlearnError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AutlearnError("bad_input", f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise AutlearnError("bad_input", f"{name}: not a readable image (not {', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow raises many types for corrupt data
        raise AutlearnError("bad_input", f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return img


def to_input(img: Image.Image, spec: dict) -> np.ndarray:
    """Convert a decoded image to float32 [H, W, C] as the bundle's input spec says."""
    img = img.convert(spec.get("color_mode", "L"))
    img = img.resize((int(spec["width"]), int(spec["height"])), PREPROCESS_RESAMPLE)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    return x * float(spec.get("scale", 1 / 255)) + float(spec.get("offset", 0.0))


def load_input(data: bytes, name: str, spec: dict, max_pixels: int) -> np.ndarray:
    return to_input(decode(data, name, max_pixels), spec)
