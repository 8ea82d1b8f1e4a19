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


# A pixel is ink when brighter than this fraction of the image's brightest pixel (fit_content).
INK_FRACTION = 0.1


def fit_content(img: Image.Image, box: int, width: int, height: int) -> Image.Image:
    """MNIST's own framing: crop to the ink (bright pixels on a dark background), scale it to fit a
    `box`×`box` square keeping its aspect ratio, and paste it into a `width`×`height` frame with its centre of
    mass at the frame's centre. An image without ink is resized plainly."""
    grey = img.convert("L")
    brightest = grey.getextrema()[1]
    threshold = INK_FRACTION * brightest
    bbox = grey.point(lambda v: 255 if v > threshold else 0).getbbox() if brightest else None
    if bbox is None:
        return img.resize((width, height), PREPROCESS_RESAMPLE)
    crop = img.crop(bbox)
    scale = box / max(crop.size)
    crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))),
                       PREPROCESS_RESAMPLE)
    mass = np.asarray(crop.convert("L"), np.float32)
    total = float(mass.sum()) or 1.0
    cy = float((mass.sum(axis=1) * np.arange(mass.shape[0])).sum()) / total
    cx = float((mass.sum(axis=0) * np.arange(mass.shape[1])).sum()) / total
    frame = Image.new(img.mode, (width, height), 0)
    frame.paste(crop, (int(round((width - 1) / 2 - cx)), int(round((height - 1) / 2 - cy))))
    return frame


def to_input(img: Image.Image, spec: dict) -> np.ndarray:
    """Convert a decoded image to float32 [H, W, C] as the bundle's input spec says: colour mode, then either
    a plain bilinear resize or, with `fit_box`, the content fitted into that box (fit_content)."""
    img = img.convert(spec.get("color_mode", "L"))
    width, height = int(spec["width"]), int(spec["height"])
    box = int(spec.get("fit_box", 0) or 0)
    img = fit_content(img, box, width, height) if box > 0 else img.resize((width, height), PREPROCESS_RESAMPLE)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    return x * float(spec.get("scale", 1 / 255)) + float(spec.get("offset", 0.0))


def load_input(data: bytes, name: str, spec: dict, max_pixels: int) -> np.ndarray:
    return to_input(decode(data, name, max_pixels), spec)
