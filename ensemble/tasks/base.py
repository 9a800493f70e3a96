"""A task wraps a model and its loss; the training loop only sees tasks."""

from __future__ import annotations

import torch
from torch import nn


class Task(nn.Module):
    """Base task: named trainable parts, one `loss(batch)` per step, and an epoch hook."""

    def parts(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict) -> torch.Tensor:
        """The loss: DistributedDataParallel wraps `forward`, so the loop calls the task itself."""
        return self.loss(batch)

    def on_epoch_start(self, epoch: int) -> None:
        """Called with the global epoch index before each epoch (e.g. margin schedules)."""

    def epoch_info(self) -> dict:
        """Facts about the epoch that just ran, for metrics.jsonl (e.g. the scheduled margin)."""
        return {}

    def set_trainable(self, names: list[str]) -> None:
        """Only the named parts learn; frozen parts run in eval mode without gradients."""
        wanted = set(self.parts()) if "all" in names else set(names)
        self.trainable = wanted
        for name, module in self.parts().items():
            module.requires_grad_(name in wanted)

    def train(self, mode: bool = True):
        super().train(mode)
        for name, module in self.parts().items():
            if name not in getattr(self, "trainable", set(self.parts())):
                module.eval()
        return self
