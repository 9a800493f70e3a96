"""What a run trains on: the member's labelled classes or the student's distill set, and the seeded
loaders over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..config.load import load_data_cfg
from ..config.schema import MemberCfg, StudentCfg
from ..data.dataset import ImageDataset, collate_skip
from ..data.manifest import Manifest, read_manifest
from ..data.sampler import kept_classes
from ..device import limit_worker_threads
from ..distributed import ShardedSampler, per_rank_batch, world
from ..errors import EnsError


@dataclass
class TrainData:
    """The train manifest reduced to the kept classes."""

    paths: list[str]
    targets: list[int]
    classes: list[str]
    counts: list[int]
    sha1: str
    domains: list[str]


def train_data(cfg: MemberCfg) -> TrainData:
    """The data config's `train:` manifest; classes below sampler.min_per_class get target -1."""
    data = load_data_cfg(cfg.data)
    if data.train is None:
        raise EnsError(f"{cfg.data}: key 'train': a member needs a train manifest")
    manifest = read_manifest(data.train)
    classes = kept_classes(manifest.labels, cfg.sampler)
    if len(classes) < 2:  # one class: the margin head's softmax has no other class, the loss is constant
        raise EnsError(f"{data.train}: {len(classes)} label(s) with >= {cfg.sampler.min_per_class} images "
                       "(sampler.min_per_class); a margin head needs at least 2 classes to learn from")
    index = {c: i for i, c in enumerate(classes)}
    targets = [index.get(label, -1) for label in manifest.labels]
    counts = [targets.count(i) for i in range(len(classes))]
    return TrainData(list(manifest.paths), targets, classes, counts, manifest.sha1, list(manifest.domains))


def distill_manifest(cfg: StudentCfg) -> Manifest:
    """The data config's `distill:` manifest, else its `train:` one; labels optional."""
    data = load_data_cfg(cfg.data)
    path = data.distill or data.train
    if path is None:
        raise EnsError(f"{cfg.data}: keys 'distill'/'train': a student needs images to distil on")
    return read_manifest(path, require_label=False)


def loader_factory(cfg: MemberCfg, dataset: ImageDataset, sampler):
    """global epoch -> DataLoader, seeded so that a resumed epoch sees the same batches and augmentations.

    In a multi-process run each rank loads its shard of the epoch with batch_size / world size.
    """
    w = world()
    batch_size = per_rank_batch(cfg.optim.batch_size, w)
    if w.size > 1:
        sampler = ShardedSampler(sampler, w)

    def seed_worker(worker_id: int) -> None:
        limit_worker_threads(worker_id)
        dataset.transform.set_random_seed(torch.initial_seed() % 2**32)

    def make_loader(global_epoch: int) -> DataLoader:
        sampler.set_epoch(global_epoch)
        if cfg.loader.workers == 0:
            dataset.transform.set_random_seed(cfg.seed * 1000 + global_epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.loader.workers,
                          collate_fn=collate_skip, worker_init_fn=seed_worker, drop_last=len(sampler) > batch_size,
                          generator=torch.Generator().manual_seed(cfg.seed * 1000 + global_epoch + 7919 * w.rank))

    return make_loader
