"""The training loop: its per-epoch record (peak GPU memory on CUDA devices only) and the weights EMA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
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


def _trained_weights(tmp_path, coil_data, sets, out):
    from ensemble.config.load import load_member_cfg
    from ensemble.train.member import train_member
    from ensemble.workspace import load_model_file
    from tests.conftest import tiny_recipe

    train_member(load_member_cfg(tiny_recipe(tmp_path, coil_data), ["eval.enabled=false", *sets]), tmp_path / out)
    return load_model_file(tmp_path / out / "members" / "tiny" / "best.pt").model.state_dict()


def test_optim_ema_decay_saves_the_moving_average_of_every_steps_weights(tmp_path, coil_data, monkeypatch):
    """The saved model is the EMA of the weights after each optimizer step, its decay ramping as
    1 - step^-0.75 (step counted from the second update) and capped at optim.ema_decay."""
    original, seen = Trainer._step, []

    def step_and_record(self, *args):
        loss = original(self, *args)
        if self.ema_step > len(seen):  # an optimizer step happened
            seen.append({k: v.detach().clone() for k, v in self.task.model.state_dict().items()})
        return loss

    monkeypatch.setattr(Trainer, "_step", step_and_record)
    saved = _trained_weights(tmp_path, coil_data, ["optim.ema_decay=0.5"], "ema")
    assert len(seen) == 9  # 3 epochs of 3 steps (24 images, batch 8)
    expected = {k: v.clone() for k, v in seen[0].items()}
    for step, weights in enumerate(seen[1:], start=1):
        decay = min(0.5, 1 - (1 + step) ** -0.75)
        for k, v in weights.items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v
    for k, v in saved.items():
        if v.is_floating_point():
            assert torch.allclose(v, expected[k], atol=1e-6), k
    last = seen[-1]["neck.1.weight"]
    assert not torch.allclose(saved["neck.1.weight"], last, atol=1e-4)  # not the raw last weights


def test_optim_ema_decay_leaves_training_itself_unchanged(tmp_path, coil_data):
    """A decay too small to average (every update copies the weights) saves the plain run's weights:
    the EMA touches no random stream and no trained weight."""
    plain = _trained_weights(tmp_path, coil_data, [], "plain")
    ema = _trained_weights(tmp_path, coil_data, ["optim.ema_decay=1e-9"], "ema")
    assert all(torch.allclose(plain[k], ema[k], atol=1e-6) for k in plain)


def test_a_killed_ema_run_resumes_its_average(tmp_path, coil_data, monkeypatch):
    from ensemble.checkpoint import load_checkpoint

    whole = _trained_weights(tmp_path, coil_data, ["optim.ema_decay=0.5"], "a")
    original_save = Trainer._save

    def save_then_die(self, *args):
        original_save(self, *args)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _trained_weights(tmp_path, coil_data, ["optim.ema_decay=0.5"], "b")
    assert load_checkpoint(tmp_path / "b" / "members" / "tiny" / "last.pt")["ema"]["step"] == 3
    monkeypatch.setattr(Trainer, "_save", original_save)
    resumed = _trained_weights(tmp_path, coil_data, ["optim.ema_decay=0.5"], "b")
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
