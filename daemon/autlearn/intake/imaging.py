"""Image decoding and validation with Pillow, and preprocessing to the base model's input.

What the bundle's `input` declares (docs/bundle-format.md): EXIF orientation, JPEG draft decoding, colour mode,
resize policy or MNIST framing, scale and offset.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import AutlearnError

log = logging.getLogger(__name__)

PREPROCESS_RESAMPLE = Image.BILINEAR
# The decoders Pillow may use, matching the suffixes ingestion accepts. Pillow picks a decoder by content, not by
# name: without this list a file named .png could reach any of its ~40 plugins (EPS even starts Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")
# Manifest input.color_mode → channels; input.resize_policy values (absent = "resize").
COLOR_MODES = {"L": 1, "RGB": 3}
RESIZE_POLICIES = ("resize", "centre_crop", "letterbox")


def decode(data: bytes, name: str, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode and fully load an image, upright (EXIF orientation applied); raise bad_input with a reason a person
    can act on. With `draft` (w, h) a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale still at least that
    big (Pillow's draft mode: a 12 MP photo for a 160 px input is decoded at 1/8, never at full size)."""
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
            if draft is not None and img.format == "JPEG":
                img.draft(None, draft)
            img.load()  # actually decode: catches truncated data
    except AutlearnError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise AutlearnError("bad_input", f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise AutlearnError("bad_input", f"{name}: not a readable image (not {', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow raises many types for corrupt data
        raise AutlearnError("bad_input", f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return upright(img, name)


def upright(img: Image.Image, name: str = "image") -> Image.Image:
    """The image as a person sees it: EXIF orientation 2-8 applied (ImageOps.exif_transpose). An orientation
    tag with a bad value (0, 9, text, a list) or an unreadable EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # a damaged EXIF block: Pillow raises several types
        log.info("%s: EXIF orientation ignored (%s: %s)", name, type(e).__name__, e)
        return img


def to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (a 16-bit grey PNG opens as I;16 or I) scaled to 8 bits; Pillow's own
    conversion to L would clip everything above 255 to white."""
    if not img.mode.startswith("I"):
        return img
    a = np.asarray(img).astype(np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")


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


def centre_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers the frame, keeping its aspect ratio, and cut the frame out of its centre."""
    iw, ih = img.size
    scale = max(width / iw, height / ih)
    cw, ch = width / scale, height / scale
    left, top = max(0.0, (iw - cw) / 2), max(0.0, (ih - ch) / 2)
    box = (left, top, min(float(iw), left + cw), min(float(ih), top + ch))
    return img.resize((width, height), PREPROCESS_RESAMPLE, box=box)


def letterbox(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the whole image fits the frame, keeping its aspect ratio, centred on black (pixel value 0)."""
    iw, ih = img.size
    scale = min(width / iw, height / ih)
    size = (min(width, max(1, round(iw * scale))), min(height, max(1, round(ih * scale))))
    frame = Image.new(img.mode, (width, height), 0)
    frame.paste(img.resize(size, PREPROCESS_RESAMPLE), ((width - size[0]) // 2, (height - size[1]) // 2))
    return frame


def to_input(img: Image.Image, spec: dict) -> np.ndarray:
    """Convert a decoded image to float32 [H, W, C] as the bundle's input spec says: colour mode, then the
    `resize_policy` (resize: bilinear to the frame; centre_crop; letterbox) or, with `fit_box`, the content
    fitted into that box (fit_content); then `pixel * scale + offset`."""
    img = to_8bit(img).convert(spec.get("color_mode", "L"))
    width, height = int(spec["width"]), int(spec["height"])
    box = int(spec.get("fit_box", 0) or 0)
    policy = spec.get("resize_policy", "resize")
    if box > 0:
        img = fit_content(img, box, width, height)
    elif policy == "centre_crop":
        img = centre_crop(img, width, height)
    elif policy == "letterbox":
        img = letterbox(img, width, height)
    else:
        img = img.resize((width, height), PREPROCESS_RESAMPLE)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    return x * np.float32(spec.get("scale", 1 / 255)) + np.float32(spec.get("offset", 0.0))


def draft_size(spec: dict) -> tuple[int, int] | None:
    """The least size a JPEG must be decoded at for this spec (any orientation, any policy); None for MNIST
    framing, which crops to the ink first and needs the full resolution."""
    if int(spec.get("fit_box", 0) or 0) > 0:
        return None
    side = max(int(spec["width"]), int(spec["height"]))
    return side, side


def load_input(data: bytes, name: str, spec: dict, max_pixels: int) -> np.ndarray:
    return to_input(decode(data, name, max_pixels, draft_size(spec)), spec)
