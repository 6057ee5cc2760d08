"""Decoding and checking images with Pillow (no torch here: prepare/augment/perturb use it).

Every decode goes through :func:`open_image` so that EXIF orientation, decompression
bombs and truncated files are handled the same way everywhere.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from imgcls.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)

# Pillow's own default (about 89 Mpx); above twice that it raises, between it warns.
# We treat both as a decompression bomb: no small-data image needs that many pixels.
MAX_PIXELS = 89_478_485


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ImageInfo:
    width: int
    height: int
    mode: str
    sha256: str


class ImageRejected(DataError):
    """An image that cannot be used; ``reason`` is a short machine-friendly word."""

    def __init__(self, path: str | os.PathLike, reason: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = reason
        self.detail = message

    def __reduce__(self):  # survives the trip back from a worker process
        return (type(self), (self.path, self.reason, self.detail))


def open_image(path: str | os.PathLike, draft_size: tuple[int, int] | None = None):
    """Open and fully decode an image, EXIF orientation applied.

    ``draft_size`` lets JPEG decoding scale down in the DCT domain when the target is
    much smaller than the file (much faster, same result after resizing).
    Raises :class:`ImageRejected` with a reason for anything unusable.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            raise ImageRejected(path, "dangling-symlink", "symbolic link points to a missing file")
        if path.stat().st_size == 0:
            raise ImageRejected(path, "empty", "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageRejected(
                        path, "decompression-bomb", f"{img.width}x{img.height} pixels is over the {MAX_PIXELS} limit"
                    )
                if draft_size is not None and img.format == "JPEG":
                    img.draft(img.mode, draft_size)
                img.load()
                # a transposed copy, or a plain copy: either way detached from the file
                return ImageOps.exif_transpose(img)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected(path, "missing", "no such file") from None
    except IsADirectoryError:
        raise ImageRejected(path, "not-a-file", "is a folder, not an image") from None
    except PermissionError:
        raise ImageRejected(path, "unreadable", "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(path, "decompression-bomb", str(exc).split(".")[0]) from None
    except UnidentifiedImageError:
        raise ImageRejected(path, "not-an-image", "not an image Pillow can read") from None
    except OSError as exc:
        message = str(exc) or type(exc).__name__
        reason = "truncated" if "truncated" in message.lower() else "corrupt"
        raise ImageRejected(path, reason, f"cannot decode: {message}") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected(path, "corrupt", f"cannot decode: {exc}") from None


def inspect_image(path: str | os.PathLike) -> ImageInfo:
    """Decode an image completely (the only real validity check) and hash its bytes."""
    img = open_image(path)
    info = ImageInfo(width=img.width, height=img.height, mode=img.mode, sha256=sha256_file(path))
    img.close()
    return info


def to_mode(img, channels: int):
    """Convert to 'L' (1 channel) or 'RGB' (3 channels), flattening transparency on white."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if channels == 1:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def channels_of_mode(mode: str) -> int:
    """1 for grayscale-like modes, 3 otherwise."""
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def image_to_uint8(img, image_size: int, channels: int):
    """Channels converted, resized to a square ``image_size`` (bilinear), as HxWxC uint8.

    This is the model's preprocessing up to normalisation: train, eval and predict
    all go through it, so the same image gives the same input everywhere.
    """
    import numpy as np
    from PIL import Image

    img = to_mode(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def load_uint8(path: str | os.PathLike, image_size: int, channels: int):
    """Decode one image file to uint8 of shape (image_size, image_size, channels)."""
    return image_to_uint8(open_image(path, draft_size=(image_size, image_size)), image_size, channels)
