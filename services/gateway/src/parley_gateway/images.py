"""Validation of `image_base64` + `image_mime`: decodes, type, signature, size, pixels.

Pillow reads only the image header to learn its dimensions, so a decompression
bomb (a small file that claims a huge canvas) is refused before anything is
decoded; `verify()` then rejects truncated or corrupt files.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from parley_gateway.errors import BadRequest, PayloadTooLarge

ALLOWED_MIME: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int


@dataclass(frozen=True, slots=True)
class ValidImage:
    mime: str
    data_base64: str
    size: int
    width: int
    height: int


def _signature_matches(mime: str, data: bytes) -> bool:
    match mime:
        case "image/png":
            return data.startswith(b"\x89PNG\r\n\x1a\n")
        case "image/jpeg":
            return data.startswith(b"\xff\xd8\xff")
        case "image/gif":
            return data.startswith((b"GIF87a", b"GIF89a"))
        case "image/webp":
            return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return False


def validate_image(
    image_base64: str | None, image_mime: str | None, limits: ImageLimits
) -> ValidImage | None:
    if image_base64 is None and image_mime is None:
        return None
    if image_base64 is None or image_base64 == "":
        raise BadRequest("image_base64: is required when image_mime is given")
    if image_mime is None:
        raise BadRequest("image_mime: is required when image_base64 is given")
    mime = image_mime.strip().lower()
    if mime not in ALLOWED_MIME:
        raise BadRequest(f"image_mime: must be one of {', '.join(ALLOWED_MIME)}")
    encoded = "".join(image_base64.split())
    if len(encoded) > (limits.max_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(f"image_base64: image is larger than {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image_base64: is not valid base64") from None
    if not data:
        raise BadRequest("image_base64: is empty")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image_base64: image is larger than {limits.max_bytes} bytes")
    if not _signature_matches(mime, data):
        raise BadRequest(f"image_base64: the bytes are not a {mime} image")
    width, height = _dimensions(data, mime, limits)
    return ValidImage(mime, encoded, len(data), width, height)


def _dimensions(data: bytes, mime: str, limits: ImageLimits) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[ALLOWED_MIME[mime]]) as img:
                width, height = img.size
                if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                    raise BadRequest(
                        f"image_base64: image is {width}x{height} pixels; the limit is "
                        f"{limits.max_pixels} pixels and {limits.max_side} per side"
                    )
                img.verify()
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(
            f"image_base64: image dimensions are too large (limit {limits.max_pixels} pixels)"
        ) from None
    except Exception:  # Pillow raises many types for broken files
        raise BadRequest(f"image_base64: not a readable {mime} image") from None
    return width, height
