"""Thumbnails with Pillow: probing, cropping and scaling, animated WebP for animations.

Everything here is synchronous and CPU-bound: the service runs it in an executor.

Safety: the format comes from the bytes (Pillow's sniffing), never from the name or the
claimed content type, and only JPEG, PNG (APNG), GIF and WebP are decoded. The image's
dimensions are read from its header and checked against `max_pixels` *before* any pixel is
decoded, so a small file claiming 50000x50000 is refused without allocating anything.
Animations are cut at `MAX_ANIMATED_FRAMES` frames and at a budget of decoded pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import (
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from starling.errors import MatrixError

Method = Literal["crop", "scale"]

# Formats we decode, as Pillow names them (MPO: the multi-picture JPEG cameras write).
_FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}
_FORMATS["WEBP"] = "image/webp"
# What Image.open may try (the JPEG opener also returns MPO images).
_OPEN_FORMATS = ["JPEG", "PNG", "GIF", "WEBP"]
# Importing the plugins registers them; Image.open(formats=...) needs them registered.
_PLUGINS = (GifImagePlugin, JpegImagePlugin, MpoImagePlugin, PngImagePlugin, WebPImagePlugin)
MAX_ANIMATED_FRAMES = 100
# EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}

# Our own pixel check runs before decoding; Pillow's warning would only be noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def cannot_thumbnail(
    msg: str = "Cannot generate thumbnails for the requested content",
) -> MatrixError:
    return MatrixError(400, "M_UNKNOWN", msg)


def too_large_to_thumbnail() -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", "Content is too large to thumbnail")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_type: str
    width: int  # after EXIF orientation
    height: int
    animated: bool


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int
    animated: bool


def _open(path: Path, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    """Open (header only) and check an image; raises the spec's 400/413 errors."""
    try:
        im = Image.open(path, formats=_OPEN_FORMATS)
    except Image.DecompressionBombError:
        raise too_large_to_thumbnail() from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise cannot_thumbnail() from None
    fmt = im.format or ""
    if fmt not in _FORMATS:
        im.close()
        raise cannot_thumbnail()
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise cannot_thumbnail()
    if width * height > max_pixels:
        im.close()
        raise too_large_to_thumbnail()
    try:
        orientation = im.getexif().get(0x0112) if fmt in ("JPEG", "MPO", "WEBP") else None
        animated = fmt in ("GIF", "PNG", "WEBP") and bool(getattr(im, "is_animated", False))
    except Exception:
        im.close()
        raise cannot_thumbnail() from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return im, ImageInfo(_FORMATS[fmt], width, height, animated)


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """Type and dimensions of an image, without decoding its pixels."""
    im, info = _open(path, max_pixels)
    im.close()
    return info


def verify(path: Path, max_pixels: int) -> ImageInfo:
    """Type and dimensions of an image whose pixels decode (every frame of an animation,
    up to MAX_ANIMATED_FRAMES); the spec's 400 error if they do not. For serving an
    original as its own thumbnail: a corrupt file must not pass as an image."""
    im, info = _open(path, max_pixels)
    try:
        for index in range(min(getattr(im, "n_frames", 1), MAX_ANIMATED_FRAMES)):
            im.seek(index)
            im.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise cannot_thumbnail() from None
    finally:
        im.close()
    return info


def scaled_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The size of an image scaled to fit inside box_w x box_h, never enlarged."""
    if width <= box_w and height <= box_h:
        return width, height
    ratio = min(box_w / width, box_h / height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def cropped_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The size of a crop to box_w x box_h: exactly that when the image is large enough,
    else the largest rectangle of the box's aspect ratio inside the image (no upscaling)."""
    if width >= box_w and height >= box_h:
        return box_w, box_h
    if width * box_h > height * box_w:  # image wider than the box's aspect
        return max(1, round(height * box_w / box_h)), height
    return width, max(1, round(width * box_h / box_w))


def output_size(info: ImageInfo, box_w: int, box_h: int, method: Method) -> tuple[int, int]:
    if method == "crop":
        return cropped_size(info.width, info.height, box_w, box_h)
    return scaled_size(info.width, info.height, box_w, box_h)


def _fit(frame: Image.Image, out_w: int, out_h: int, method: Method) -> Image.Image:
    if method == "scale":
        return frame.resize((out_w, out_h), Image.Resampling.LANCZOS)
    # Crop: scale so the image covers out_w x out_h, then cut the middle.
    return ImageOps.fit(frame, (out_w, out_h), Image.Resampling.LANCZOS)


def _static_mode(im: Image.Image, jpeg: bool) -> Image.Image:
    if jpeg:
        return im if im.mode == "RGB" else im.convert("RGB")
    if im.mode in ("RGB", "RGBA", "L", "LA"):
        return im
    return im.convert("RGBA")


def make_thumbnail(
    path: Path,
    box_w: int,
    box_h: int,
    method: Method,
    animated: bool,
    max_pixels: int,
) -> Thumbnail:
    """A thumbnail of the image at `path` for a box of box_w x box_h.

    JPEG sources give JPEG thumbnails, the others PNG; with `animated` and an animated
    source, an animated WebP of at most MAX_ANIMATED_FRAMES frames.
    """
    im, info = _open(path, max_pixels)
    try:
        out_w, out_h = output_size(info, box_w, box_h, method)
        try:
            if animated and info.animated:
                return _animated(im, info, out_w, out_h, method, max_pixels)
            return _static(im, info, out_w, out_h, method)
        except MatrixError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            # Truncated or corrupt data found while decoding.
            raise cannot_thumbnail() from None
    finally:
        im.close()


def _static(im: Image.Image, info: ImageInfo, out_w: int, out_h: int, method: Method) -> Thumbnail:
    jpeg = info.content_type == "image/jpeg"
    if jpeg:
        # Let the JPEG decoder downscale by a power of two while staying above the target:
        # big photos decode in a fraction of the time and memory.
        need = (out_w, out_h)
        if (info.width, info.height) != im.size:  # EXIF rotation swaps the axes
            need = (out_h, out_w)
        if method == "crop":
            # Cropping scales to cover the box, which can need more than the box itself.
            scale = max(need[0] / im.size[0], need[1] / im.size[1])
            need = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im.draft("RGB", need)
    im.seek(0)
    frame = ImageOps.exif_transpose(im) if jpeg or info.content_type == "image/webp" else im
    frame = _static_mode(frame, jpeg)
    thumb = _fit(frame, out_w, out_h, method)
    buf = io.BytesIO()
    if jpeg:
        thumb.save(buf, "JPEG", quality=85, optimize=True)
        content_type = "image/jpeg"
    else:
        thumb.save(buf, "PNG", optimize=True)
        content_type = "image/png"
    return Thumbnail(buf.getvalue(), content_type, thumb.width, thumb.height, False)


def _animated(
    im: Image.Image, info: ImageInfo, out_w: int, out_h: int, method: Method, max_pixels: int
) -> Thumbnail:
    frames: list[Image.Image] = []
    durations: list[int] = []
    # Decoding every frame costs the full canvas; stop at twice the single-image budget.
    budget = 2 * max_pixels
    frame_pixels = im.size[0] * im.size[1]
    index = 0
    while index < MAX_ANIMATED_FRAMES and budget >= frame_pixels:
        try:
            im.seek(index)
        except EOFError:
            break
        budget -= frame_pixels
        frame = im.convert("RGBA")
        frames.append(_fit(frame, out_w, out_h, method))
        durations.append(max(20, int(im.info.get("duration", 100) or 100)))
        index += 1
    if not frames:
        raise cannot_thumbnail()
    buf = io.BytesIO()
    if len(frames) == 1:
        frames[0].save(buf, "PNG", optimize=True)
        return Thumbnail(buf.getvalue(), "image/png", out_w, out_h, False)
    frames[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=int(im.info.get("loop", 0) or 0),
        quality=80,
        method=4,
    )
    return Thumbnail(buf.getvalue(), "image/webp", out_w, out_h, True)
