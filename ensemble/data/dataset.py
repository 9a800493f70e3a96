"""Image datasets that skip unreadable files, and a log that counts and bounds the failures."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from ..errors import EnsError
from .decode import DecodeError, decode_image

log = logging.getLogger("ensemble")


class ImageDataset(Dataset):
    """Decodes `paths[i]`, applies `transform` to the HxWx3 uint8 array, returns (x, target, i).

    An unreadable image returns (None, reason, i); `collate_skip` separates those out.
    """

    def __init__(self, paths, targets, transform: Callable, draft_px: int | None = None):
        self.paths, self.targets, self.transform, self.draft_px = list(paths), list(targets), transform, draft_px

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            arr = decode_image(self.paths[i], self.draft_px)
        except DecodeError as exc:
            return None, str(exc), i
        return self.transform(arr), self.targets[i], i


def collate_skip(batch) -> dict:
    """Stack the readable samples (tuples of views stack per view); list the failed ones as (index, reason)."""
    good = [b for b in batch if b[0] is not None]
    failed = [(b[2], b[1]) for b in batch if b[0] is None]
    if not good:
        return {"images": None, "targets": None, "indices": torch.empty(0, dtype=torch.long), "failed": failed}
    first = good[0][0]
    images = tuple(torch.stack([b[0][v] for b in good]) for v in range(len(first))) if isinstance(first, tuple) \
        else torch.stack([b[0] for b in good])
    return {
        "images": images,
        "targets": torch.as_tensor([b[1] for b in good], dtype=torch.long),
        "indices": torch.as_tensor([b[2] for b in good], dtype=torch.long),
        "failed": failed,
    }


class FailureLog:
    """Counts decoded and failed images; warns once per file; stops past `max_ratio` of the job.

    Mid-run it stops as soon as the failures are more than the whole job may have (max_ratio of its images),
    so one bad image among the first few never ends a run that would finish within bounds, and a job of
    broken images stops after max_ratio of them."""

    def __init__(self, paths, max_ratio: float, readable_before: int = 0):
        """readable_before: rows of the same job already embedded elsewhere (a cache), counted as read."""
        self.paths, self.max_ratio = list(paths), max_ratio
        self.seen, self.failed = readable_before, {}
        self.total = len(self.paths) + readable_before

    def update(self, batch: dict) -> None:
        self.seen += len(batch["indices"]) + len(batch["failed"])
        for index, reason in batch["failed"]:
            if self.paths[index] not in self.failed:
                log.warning("skipped unreadable image %s: %s", self.paths[index], reason)
            self.failed[self.paths[index]] = reason
        self.check(final=False)

    def check(self, final: bool = True) -> None:
        if self.seen == 0:
            return
        ratio = len(self.failed) / self.seen
        limit = f"max_fail_ratio {self.max_ratio:.1%}"
        if final and ratio > self.max_ratio:
            why = f"{len(self.failed)} of {self.seen} images unreadable ({ratio:.1%} > {limit})"
        elif not final and len(self.failed) > self.max_ratio * self.total:
            why = f"{len(self.failed)} of the job's {self.total} images unreadable already (over {limit})"
        else:
            return
        first = next(iter(self.failed))
        raise EnsError(f"{why}; first: {first}: {self.failed[first]}")
