import pytest

from ensemble.errors import EnsError
from ensemble.train.recipe import load_recipe


@pytest.mark.parametrize("augment, expected", [
    ("{ops: {hflip: {p: 2}}}", r"augment.ops.hflip \{'p': 2\}: albumentations refused p: Input should be less than "
                               r"or equal to 1$"),
    ("{resize: random_resized_crop, crop_scale: [1.2, 0.5]}",
     r"augment.crop_scale \[1.2, 0.5\]: albumentations refused scale: .*must be >= 0 and <= 1$"),
    ("{ops: {nope: {p: 1}}}", r"augment.ops.nope: unknown augmentation"),
])
def test_a_recipes_augmentations_are_checked_when_it_loads_in_one_line(tmp_path, augment, expected):
    (tmp_path / "data.yaml").write_text("{}\n")
    (tmp_path / "m.yaml").write_text(f"data: data.yaml\naugment: {augment}\n")
    with pytest.raises(EnsError, match=rf"^{tmp_path / 'm.yaml'}: {expected}") as info:
        load_recipe(tmp_path / "m.yaml")  # before any weights load or any image is read
    assert "\n" not in str(info.value)
