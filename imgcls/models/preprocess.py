"""The model's own preprocessing, shared by train, eval and predict.

An image becomes a uint8 HxWxC array (decode, EXIF orientation, channels, resize to a
square ``image_size`` with bilinear filtering), and a batch of those becomes a float
tensor normalised with the model's mean/std. Keeping the uint8 step separate lets
caches store compact decoded images and lets normalisation run on the device.
"""

from __future__ import annotations

import os

import numpy as np

from imgcls.images import open_image, to_mode


def load_uint8(path: str | os.PathLike, image_size: int, channels: int) -> np.ndarray:
    """Decode one image to uint8 of shape (image_size, image_size, channels)."""
    from PIL import Image

    img = open_image(path, draft_size=(image_size, image_size))
    return image_to_uint8(img, image_size, channels)


def image_to_uint8(img, image_size: int, channels: int) -> np.ndarray:
    from PIL import Image

    img = to_mode(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def normalize(batch, mean, std):
    """uint8 NHWC (or NCHW float already scaled) -> normalised float NCHW on the batch's device."""
    import torch

    if batch.dtype == torch.uint8:
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean_t) / std_t
