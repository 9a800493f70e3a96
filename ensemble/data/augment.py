"""Training augmentations by name (albumentations) and the eval preprocessing."""

from __future__ import annotations

import albumentations as A
import cv2
import torch

from ..config.schema import AugmentCfg
from ..errors import EnsError
from ..models.preprocess import Preprocess


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
    """HxWx3 uint8 array -> augmentations (albumentations) -> the eval `Preprocess` -> 3xSxS tensor.

    Resizing and normalisation are the very module eval and exported files run, so an image without
    augmentation is prepared identically in training, `ens eval` and the exported file.
    """

    def __init__(self, compose: A.Compose, preprocess: Preprocess):
        self.compose, self.preprocess = compose, preprocess

    def __call__(self, arr):
        with torch.no_grad():
            return self.preprocess(to_uint8_tensor(self.compose(image=arr)["image"])[None])[0]

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)


def build_train_transform(cfg: AugmentCfg, size_px: int, mean, std) -> TrainTransform:
    """The enabled named ops (after a random-resized-crop in that mode), then `Preprocess`:
    bilinear antialiased resize to size_px and (x / 255 - mean) / std, as in eval."""
    return TrainTransform(A.Compose(_steps(cfg, size_px)), Preprocess(size_px, mean, std))


def check_augment(cfg: AugmentCfg) -> None:
    """Build every op once so that a bad name or setting fails when the recipe loads, not at the first batch."""
    _steps(cfg, 32)


def _steps(cfg: AugmentCfg, size_px: int) -> list:
    steps = []
    if cfg.resize == "random_resized_crop":
        steps = [_built("crop_scale", list(cfg.crop_scale), A.RandomResizedCrop,
                        size=(size_px, size_px), scale=tuple(cfg.crop_scale))]
    for name, kwargs in cfg.ops.items():
        if name not in OPS:
            raise EnsError(f"augment.ops.{name}: unknown augmentation; known: {sorted(OPS)}")
        if kwargs is not None:
            steps.append(_built(f"ops.{name}", kwargs, OPS[name], **kwargs))
    return steps


def _built(key: str, value, make, **kwargs):
    try:
        return make(**kwargs)
    except TypeError as exc:
        raise EnsError(f"augment.{key}: {exc}") from None
    except ValueError as exc:  # albumentations validates its arguments with pydantic: name the one it refused
        cause = exc if hasattr(exc, "errors") else exc.__cause__  # re-raised as a plain ValueError
        errors = cause.errors() if hasattr(cause, "errors") else []
        why = (f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}" if errors
               else str(exc).splitlines()[0])
        raise EnsError(f"augment.{key} {value}: albumentations refused {why}") from None


def to_uint8_tensor(arr) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW uint8 tensor."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
