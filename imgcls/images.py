"""Decoding and checking images with Pillow (no torch here: prepare/augment/perturb use it).

Every decode goes through :func:`open_image` so that EXIF orientation, decompression
bombs, truncated files and bit depths are handled the same way everywhere.

Bit depths (:func:`to_8bit`): every command works on 8-bit images. 16-bit images (PNG,
TIFF, PGM: Pillow's ``I;16`` modes, and ``I`` holding values up to 65535) are scaled
from 0..65535 to 0..255, rounded (microscopy, medical and astronomy data are often
16-bit). Floating-point images (``F``, e.g. float TIFF) are taken as 0..1 and scaled to
0..255; values outside 0..1, NaN or infinity, and 32-bit integers beyond 65535 are
rejected by name rather than guessed at. Palette, bilevel, CMYK, YCbCr, LAB and HSV
images are converted by Pillow; transparency is flattened on white (:func:`to_mode`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
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


# Modes every command handles as they are; the rest are converted (see to_8bit / to_mode).
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "HSV"})
SIXTEEN_BIT_MAX = 65535


def to_8bit(img, path: str | os.PathLike = "image"):
    """An 8-bit version of a high-bit-depth or floating-point image (see the module docstring).

    Raises :class:`ImageRejected` for values that have no clear 8-bit meaning.
    """
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode in EIGHT_BIT_MODES:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img)
        if a.size == 0:
            return img.convert("L")
        if mode == "F":
            if not np.isfinite(a).all():
                raise ImageRejected(path, "bad-pixels", "floating-point image with NaN or infinite pixel values")
            lo, hi = float(a.min()), float(a.max())
            if lo < 0.0 or hi > 1.0:
                raise ImageRejected(path, "unsupported-range",
                                    f"floating-point image with values {lo:g} to {hi:g}; imgcls reads float images "
                                    f"as 0..1: rescale it, or save it as an 8- or 16-bit image")
            out = np.rint(a.astype(np.float64) * 255.0)
        else:
            a = a.astype(np.int64)
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > SIXTEEN_BIT_MAX:
                raise ImageRejected(path, "unsupported-range",
                                    f"32-bit integer image with values {lo} to {hi} (beyond 16 bits); "
                                    f"save it as an 8- or 16-bit image")
            out = (a * 255 + SIXTEEN_BIT_MAX // 2) // SIXTEEN_BIT_MAX
        result = Image.fromarray(out.astype(np.uint8), "L")
        result.info.update(img.info)
        return result
    try:
        if mode == "LAB":  # CIE L*a*b*: Pillow converts it through a colour profile only
            from PIL import ImageCms

            transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                "LAB", "RGB")
            return ImageCms.applyTransform(img, transform)
        return img.convert("RGB")
    except (ValueError, OSError, ImportError):
        raise ImageRejected(path, "unsupported-mode", f"image mode {mode!r} is not supported") from None


def open_image(path: str | os.PathLike, draft_size: tuple[int, int] | None = None):
    """Open and fully decode an image, EXIF orientation applied, as 8 bits per channel (:func:`to_8bit`).

    ``draft_size`` lets JPEG decoding scale down in the DCT domain when the target is
    much smaller than the file (much faster, same result after resizing).
    Raises :class:`ImageRejected` with a reason for anything unusable.
    """
    img, _mode = _open_raw(path, draft_size)
    try:
        return to_8bit(img, path)
    except ImageRejected:
        img.close()
        raise


def _open_raw(path: str | os.PathLike, draft_size: tuple[int, int] | None = None):
    """(decoded image in its own mode, that mode); see :func:`open_image`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if path.is_symlink():
            try:
                os.stat(path)
            except FileNotFoundError:
                raise ImageRejected(path, "dangling-symlink", "symbolic link points to a missing file") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ImageRejected(path, "symlink-loop", "symbolic links form a loop") from None
                raise
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            raise ImageRejected(path, "not-a-file", f"is {kind}, not an image file")
        if st.st_size == 0:
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
                return ImageOps.exif_transpose(img), img.mode
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
    raw, mode = _open_raw(path)
    to_8bit(raw, path)  # values with no 8-bit meaning are rejected here, at prepare time
    info = ImageInfo(width=raw.width, height=raw.height, mode=mode, sha256=sha256_file(path))
    raw.close()
    return info


def to_mode(img, channels: int):
    """Convert to 'L' (1 channel) or 'RGB' (3 channels), flattening transparency on white."""
    from PIL import Image

    img = to_8bit(img)
    if img.mode == "La":  # premultiplied alpha
        img = img.convert("LA")
    elif img.mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if channels == 1:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def channels_of_mode(mode: str) -> int:
    """1 for grayscale-like modes, 3 otherwise."""
    return 1 if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16") else 3


def image_to_uint8(img, image_size: int, channels: int):
    """Channels converted, resized to a square ``image_size`` (bilinear), as HxWxC uint8.

    This is the model's preprocessing up to normalisation: train, eval and predict
    all go through it, so the same image gives the same input everywhere.
    """
    import numpy as np
    from PIL import Image

    img = to_mode(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def load_uint8(path: str | os.PathLike, image_size: int, channels: int):
    """Decode one image file to uint8 of shape (image_size, image_size, channels)."""
    return image_to_uint8(open_image(path, draft_size=(image_size, image_size)), image_size, channels)
