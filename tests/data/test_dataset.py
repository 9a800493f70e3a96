import pytest
import torch
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
    with pytest.raises(EnsError, match=r"^1 of the job's 3 images unreadable already \(over max_fail_ratio 10.0%\)"):
        strict.update(batch)
    with pytest.raises(EnsError, match=r"1 of 3 images unreadable \(33.3% > max_fail_ratio 10.0%\); first: .*bad.jpg"):
        strict.check(final=True)


def fake_batch(good: int, failed: list[int]) -> dict:
    return {"indices": torch.arange(good), "failed": [(i, "cannot identify image file") for i in failed]}


def test_mid_run_a_job_stops_only_once_its_failures_exceed_what_the_whole_job_allows():
    """1% of 1,000 images is 10: one bad image among the first 64 no longer ends the run (it did: 1 of 64
    is 1.6%), the 11th failure does, before the rest is read."""
    log = FailureLog([f"{i}.jpg" for i in range(1000)], max_ratio=0.01)
    log.update(fake_batch(63, [63]))
    log.update(fake_batch(55, list(range(64, 73))))  # 10 failed in 128 seen (7.8%): still within the job's 10
    with pytest.raises(EnsError, match=r"^11 of the job's 1000 images unreadable already \(over max_fail_ratio 1.0%\); "
                                       r"first: 63.jpg: cannot identify"):
        log.update(fake_batch(0, [200]))
    log = FailureLog([f"{i}.jpg" for i in range(100)], max_ratio=0.0, readable_before=900)
    with pytest.raises(EnsError, match=r"^1 of the job's 1000 images unreadable already \(over max_fail_ratio 0.0%\)"):
        log.update(fake_batch(3, [3]))
