"""Training augmentations by name (albumentations) and the eval preprocessing."""

from __future__ import annotations

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2

from ..config.schema import AugmentCfg
from ..errors import EnsError


def _hflip(p=0.5):
    return A.HorizontalFlip(p=p)


def _color(p=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02):
    return A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=p)


def _shift_scale_rotate(p=0.5, shift=0.1, scale=0.1, rotate_deg=10):
    return A.Affine(translate_percent=(-shift, shift), scale=(1 - scale, 1 + scale),
                    rotate=(-rotate_deg, rotate_deg), border_mode=cv2.BORDER_CONSTANT, p=p)


def _coarse_dropout(p=0.3, holes=4, size_frac=0.1):
    return A.CoarseDropout(num_holes_range=(1, holes), hole_height_range=(0.02, size_frac),
                           hole_width_range=(0.02, size_frac), fill=0, p=p)


def _grayscale(p=0.1):
    return A.ToGray(p=p)


OPS = {"hflip": _hflip, "color": _color, "shift_scale_rotate": _shift_scale_rotate,
       "coarse_dropout": _coarse_dropout, "grayscale": _grayscale}


class TrainTransform:
    """HxWx3 uint8 array -> normalised 3xSxS tensor through an albumentations pipeline."""

    def __init__(self, compose: A.Compose):
        self.compose = compose

    def __call__(self, arr):
        return self.compose(image=arr)["image"]

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)


def build_train_transform(cfg: AugmentCfg, size_px: int, mean, std) -> TrainTransform:
    """Resize (or random-resized-crop) to size_px, the enabled named ops, normalise, to tensor."""
    if cfg.resize == "random_resized_crop":
        steps = [A.RandomResizedCrop(size=(size_px, size_px), scale=tuple(cfg.crop_scale))]
    else:
        steps = [A.Resize(size_px, size_px, interpolation=cv2.INTER_AREA)]
    for name, kwargs in cfg.ops.items():
        if name not in OPS:
            raise EnsError(f"augment.ops.{name}: unknown augmentation; known: {sorted(OPS)}")
        if kwargs is None:
            continue
        try:
            steps.append(OPS[name](**kwargs))
        except TypeError as exc:
            raise EnsError(f"augment.ops.{name}: {exc}") from None
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return TrainTransform(A.Compose(steps))


def to_uint8_tensor(arr) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW uint8 tensor."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
