import numpy as np
import pytest
import torch

from ensemble.config.schema import AugmentCfg
from ensemble.data.augment import build_train_transform, to_uint8_tensor
from ensemble.errors import EnsError
from ensemble.models.preprocess import Preprocess


def test_default_guie_ops_give_normalised_tensor():
    transform = build_train_transform(AugmentCfg(), 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    names = [type(t).__name__ for t in transform.compose.transforms]
    assert names == ["HorizontalFlip", "ColorJitter", "Affine", "CoarseDropout"]
    out = transform(np.full((30, 70, 3), 255, np.uint8))
    assert tuple(out.shape) == (3, 48, 48) and out.max() <= 1.0 + 1e-6


def test_without_ops_training_pixels_are_the_eval_pixels():
    """Resize and normalisation in training are the eval `Preprocess` itself, not a look-alike."""
    image = np.random.default_rng(1).integers(0, 255, (61, 90, 3), dtype=np.uint8)
    mean, std = (0.50196, 0.4, 0.3), (0.50196, 0.2, 0.25)
    train = build_train_transform(AugmentCfg(ops={}), 40, mean, std)(image)
    evaluated = Preprocess(40, mean, std)(to_uint8_tensor(image)[None])[0]
    assert torch.equal(train, evaluated)


def test_ops_can_be_disabled_and_are_seeded():
    cfg = AugmentCfg(resize="random_resized_crop", ops={"hflip": {"p": 0.5}, "color": None})
    transform = build_train_transform(cfg, 16, (0, 0, 0), (1, 1, 1))
    assert [type(t).__name__ for t in transform.compose.transforms][:2] == ["RandomResizedCrop", "HorizontalFlip"]
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    transform.set_random_seed(7)
    a = transform(image)
    transform.set_random_seed(7)
    assert (transform(image) == a).all()


def test_unknown_op_and_bad_argument():
    with pytest.raises(EnsError, match=r"augment.ops.blurr: unknown augmentation"):
        build_train_transform(AugmentCfg(ops={"blurr": {}}), 16, (0, 0, 0), (1, 1, 1))
    with pytest.raises(EnsError, match=r"augment.ops.hflip: .*unexpected keyword"):
        build_train_transform(AugmentCfg(ops={"hflip": {"prob": 1}}), 16, (0, 0, 0), (1, 1, 1))
