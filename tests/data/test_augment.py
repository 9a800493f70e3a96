import numpy as np
import pytest

from ensemble.config.schema import AugmentCfg
from ensemble.data.augment import build_train_transform
from ensemble.errors import EnsError


def test_default_guie_ops_give_normalised_tensor():
    transform = build_train_transform(AugmentCfg(), 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    names = [type(t).__name__ for t in transform.compose.transforms]
    assert names == ["Resize", "HorizontalFlip", "ColorJitter", "Affine", "CoarseDropout", "Normalize", "ToTensorV2"]
    out = transform(np.full((30, 70, 3), 255, np.uint8))
    assert tuple(out.shape) == (3, 48, 48) and out.max() <= 1.0 + 1e-6


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
