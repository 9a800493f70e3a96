"""Class-balanced sampling (GUIE 2nd place): drop rare classes, cap frequent ones, oversample to a floor."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler

from ..config.schema import SamplerCfg


def kept_classes(labels: list[str] | tuple[str, ...], cfg: SamplerCfg) -> list[str]:
    """Labels with at least `min_per_class` images, sorted."""
    counts: dict[str, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return sorted(label for label, n in counts.items() if n >= cfg.min_per_class)


def class_domains(targets: list[int], domains: list[str]) -> dict[int, str]:
    """Domain of each kept class (that of its first row); a class is assumed to lie in one domain."""
    out: dict[int, str] = {}
    for target, domain in zip(targets, domains, strict=True):
        if target >= 0:
            out.setdefault(target, domain)
    return out


class ClassBalancedSampler(Sampler[int]):
    """Yields a new balanced, shuffled list of dataset indices each epoch (seeded by seed + epoch).

    targets: class index per row, or -1 for rows whose class was dropped.
    domains: domain per row; with cfg.domain_alpha set, the class-balanced rows of each domain are
    resampled to the domain's share of the epoch (the epoch's length is unchanged).
    """

    def __init__(self, targets: list[int], cfg: SamplerCfg, seed: int = 0, domains: list[str] | None = None):
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        by_class: dict[int, list[int]] = defaultdict(list)
        for row, target in enumerate(targets):
            if target >= 0:
                by_class[target].append(row)
        self.by_class = {c: np.asarray(rows) for c, rows in sorted(by_class.items())}
        self.domain_of = (class_domains(targets, domains)
                          if domains is not None and cfg.domain_alpha is not None else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_class(self, n: int) -> int:
        return max(min(n, self.cfg.max_per_class), self.cfg.oversample_to)

    def __len__(self) -> int:
        return sum(self._per_class(len(rows)) for rows in self.by_class.values())

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = []
        for rows in self.by_class.values():
            want = self._per_class(len(rows))
            picked = rng.permutation(rows)[: min(want, len(rows))]
            extra = rng.choice(rows, size=want - len(picked), replace=True) if want > len(picked) else []
            chosen.append(np.concatenate([picked, extra]).astype(np.int64))
        if self.domain_of is not None:
            chosen = self._domain_shares(chosen, rng)
        order = rng.permutation(np.concatenate(chosen))
        return iter(order.tolist())

    def _domain_shares(self, chosen: list[np.ndarray], rng) -> list[np.ndarray]:
        """Resample each domain's class-balanced rows to length total x size^alpha / sum(size^alpha)."""
        pools: dict[str, list[np.ndarray]] = defaultdict(list)
        for c, rows in zip(self.by_class, chosen, strict=True):
            pools[self.domain_of[c]].append(rows)
        sizes = {d: sum(len(r) for r in parts) for d, parts in sorted(pools.items())}
        weights = np.array([n ** self.cfg.domain_alpha for n in sizes.values()], np.float64)
        total = sum(sizes.values())
        quotas = np.floor(total * weights / weights.sum()).astype(int)
        quotas[: total - quotas.sum()] += 1  # the rounding remainder, one row each to the first domains
        out = []
        for (d, _), quota in zip(sizes.items(), quotas, strict=True):
            pool = rng.permutation(np.concatenate(pools[d]))
            repeats = rng.choice(pool, size=max(quota - len(pool), 0), replace=True)
            out.append(np.concatenate([pool[:quota], repeats]).astype(np.int64))
        return out


class ShuffleSampler(Sampler[int]):
    """Every row once per epoch, in an order seeded by (seed, epoch) (distillation needs no balancing)."""

    def __init__(self, rows: int, seed: int = 0):
        self.rows, self.seed, self.epoch = rows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rows

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.rows).tolist())
