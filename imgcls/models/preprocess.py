"""The model's own preprocessing, shared by train, eval and predict.

An image becomes a uint8 HxWxC array (decode, EXIF orientation, channels, resize to a
square ``image_size`` with bilinear filtering), and a batch of those becomes a float
tensor normalised with the model's mean/std. Keeping the uint8 step separate lets
caches store compact decoded images and lets normalisation run on the device.
"""

from __future__ import annotations

from imgcls.images import image_to_uint8, load_uint8  # noqa: F401  (the torch-free half lives there)


def normalize(batch, mean, std):
    """uint8 NHWC (or NCHW float already scaled) -> normalised float NCHW on the batch's device."""
    import torch

    if batch.dtype == torch.uint8:
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean_t) / std_t
