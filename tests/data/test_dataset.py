import torch
import pytest
from PIL import Image

from ensemble.data.dataset import FailureLog, ImageDataset, collate_skip
from ensemble.errors import EnsError


def test_unreadable_images_are_skipped_named_and_bounded(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"")
    paths = [str(good), str(tmp_path / "bad.jpg"), str(good)]
    dataset = ImageDataset(paths, [0, 1, 2], lambda arr: torch.tensor(arr, dtype=torch.float32).mean())
    batch = collate_skip([dataset[i] for i in range(3)])
    assert batch["indices"].tolist() == [0, 2] and batch["targets"].tolist() == [0, 2]
    assert batch["failed"][0][0] == 1
    log = FailureLog(paths, max_ratio=0.5)
    log.update(batch)
    assert "bad.jpg" in caplog.text and list(log.failed) == [str(tmp_path / "bad.jpg")]
    log.check()  # 1 of 3 is under 50%
    strict = FailureLog(paths, max_ratio=0.1)
    strict.update(batch)  # too few images seen to judge mid-run
    with pytest.raises(EnsError, match=r"1 of 3 images unreadable \(33.3% > max_fail_ratio 10.0%\); first: .*bad.jpg"):
        strict.check(final=True)
