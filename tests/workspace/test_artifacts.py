import torch

from ensemble.config.schema import BackboneCfg, MemberCfg, NeckCfg
from ensemble.deploy.torchscript import serialize, trace
from ensemble.models.member import build_member_model
from ensemble.workspace.artifacts import load_model_file, save_model
from tests.conftest import TINY_VIT


class Resized(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.embed(torch.nn.functional.interpolate(images.float(), size=(32, 32)))


def test_a_loaded_file_embeds_without_grad_checkpointing_so_it_exports(tmp_path):
    # the ViT-H recipes train with grad_checkpointing; under torch 2.11 torch.utils.checkpoint entered
    # the traced graph and `ens export` failed in torch.jit.save (GPU run, 2026-12-04). Newer torch skips
    # checkpointing under no_grad, so here the flag assertion is the one that fails on the old code.
    cfg = MemberCfg(name="gc", data="unused.yaml", backbone=BackboneCfg(arch=TINY_VIT, grad_checkpointing=True),
                    neck=NeckCfg(dims=[8]))
    model = build_member_model(cfg, load_weights=False)
    assert model.backbone.tower.transformer.grad_checkpointing is True
    save_model(tmp_path / "best.pt", model, cfg, {"recipe": "test"})
    loaded = load_model_file(tmp_path / "best.pt").model
    assert loaded.backbone.tower.transformer.grad_checkpointing is False
    assert len(serialize(trace(Resized(loaded)), {})) > 0
