"""The training loop's per-epoch record: peak GPU memory on CUDA devices, nothing on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ensemble.train.loop import Trainer


def test_peak_memory_is_recorded_on_cuda_only(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: asked.append(device) or 3.5 * 2**30)
    cuda = torch.device("cuda", 0)
    assert Trainer._peak_memory(SimpleNamespace(device=cuda)) == {"peak_mem_gb": 3.5}
    assert asked == [cuda]
    assert Trainer._peak_memory(SimpleNamespace(device=torch.device("cpu"))) == {}
    assert asked == [cuda]  # the CPU never asks the CUDA counter
