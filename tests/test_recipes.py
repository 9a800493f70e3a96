"""Every shipped recipe takes real steps under its own settings.

Each YAML in members/ and distill/ is loaded as shipped and trained in one shared workspace with its
own precision (bf16 autocast on the CPU), head, margins, stages, image size (positional-embedding
resampling), drop_proj, init_from chain, grad checkpointing and layer decay. Only these are
swapped: the architecture, for a 2-block open_clip ViT of the same patch size where the real one is
too big (the timm MobileNets stay real, with ../shared/weights); the data, for a few coil20 images;
machine settings (loader workers, eval after training); and one optimiser step per epoch
(`optim.max_steps_per_epoch`). Each trained model is then embedded and exported, and the exported
file is run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.config.load import load_member_cfg, load_student_cfg
from ensemble.config.schema import MemberCfg, StudentCfg
from ensemble.losses.margin import margin_at_epoch
from ensemble.models.member import build_member_model
from tests.conftest import COIL20, ROOT, coil_rows, need_shared, write_manifest

# the real open_clip architectures -> a tiny stand-in of the same family (registered below)
STAND_INS = {"ViT-H-14": "ens-test-vit-h-14", "ViT-L-14-336-quickgelu": "ens-test-vit-l-14-336-quickgelu"}
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("members/**/*.yaml"),
                                                           *ROOT.glob("distill/**/*.yaml")])


def _register_stand_ins(folder: Path) -> None:
    import open_clip

    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}
    for real, tiny in STAND_INS.items():
        size = 336 if "336" in real else 224
        cfg = {"embed_dim": 32, "quick_gelu": "quickgelu" in real, "text_cfg": text,
               "vision_cfg": {"image_size": size, "layers": 2, "width": 48, "head_width": 16, "patch_size": 14}}
        path = folder / f"{tiny}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)


def _tiny_data(folder: Path) -> Path:
    """2 train classes x 3 images; 4 queries; 68 index images (PCA-64 of the ensembles needs >= 64)."""
    need_shared(COIL20)
    write_manifest(folder / "train.csv", coil_rows("train", 3, 2))
    write_manifest(folder / "query.csv", coil_rows("query", 1, 4))
    write_manifest(folder / "index.csv", coil_rows("index", 17, 4))
    (folder / "data.yaml").write_text("train: train.csv\nquery: query.csv\nindex: index.csv\n")
    return folder / "data.yaml"


class RecipeWorkspace:
    """Trains shipped recipes on demand, dependencies first (init_from members, teacher ensembles),
    so each test may run alone or in any order."""

    def __init__(self, folder: Path):
        self.folder, self.workdir = folder, folder / "runs"
        self.data = _tiny_data(folder)
        self.members = {p.stem: p for p in ROOT.glob("members/**/*.yaml")}  # member names are file stems
        self.done: dict[str, dict] = {}

    def overrides(self, path: Path) -> list[str]:
        sets = [f"data={self.data}", "loader.workers=0", "eval.enabled=false", "device=cpu",
                "optim.max_steps_per_epoch=1"]
        raw = load_member_cfg(path, sets, StudentCfg if self.is_student(path) else MemberCfg)
        if raw.backbone.source == "open_clip":
            if raw.backbone.arch not in STAND_INS:
                raise AssertionError(f"{path}: no tiny stand-in for {raw.backbone.arch}; add one to STAND_INS")
            sets += [f"backbone.arch={STAND_INS[raw.backbone.arch]}", "backbone.pretrained=null"]
        return sets

    @staticmethod
    def is_student(path: Path) -> bool:
        return path.relative_to(ROOT).parts[0] == "distill"

    def cfg(self, path: Path):
        loader = load_student_cfg if self.is_student(path) else load_member_cfg
        return loader(path, self.overrides(path))

    def run(self, path: Path):
        """Train the recipe at `path` (once), after whatever it depends on; returns its config."""
        key = str(path)
        if key in self.done:
            return self.done[key]
        cfg = self.cfg(path)
        if cfg.backbone.init_from:
            self.run(self.member_path(cfg.backbone.init_from))
        if isinstance(cfg, StudentCfg):
            from ensemble.train.student import distill

            self.ensemble(cfg.teacher)
            distill(cfg, self.workdir)
        else:
            from ensemble.train.member import train_member

            train_member(cfg, self.workdir)
        self.done[key] = cfg
        return cfg

    def member_path(self, name: str) -> Path:
        assert name in self.members, f"no member recipe named {name}"
        return self.members[name]

    def ensemble(self, name: str) -> None:
        from ensemble.fuse.config import ensemble_cfg
        from ensemble.fuse.fit import fuse

        if f"ensemble:{name}" in self.done:
            return
        path = ROOT / "configs" / "ensemble" / f"{name}.yaml"
        sets = [f"data={self.data}", "workers=0", "device=cpu"]
        if ensemble_cfg(self.workdir, str(path)).fit_on == "train":
            sets.append("fit_on=index")  # the tiny train split has 6 images, fewer than PCA-64 needs
        cfg = ensemble_cfg(self.workdir, str(path), sets)
        for member in cfg.members:
            self.run(self.member_path(member))
        fuse(cfg, self.workdir)
        self.done[f"ensemble:{name}"] = cfg


@pytest.fixture(scope="session")
def recipe_ws(tmp_path_factory) -> RecipeWorkspace:
    folder = tmp_path_factory.mktemp("recipes")
    _register_stand_ins(folder)
    return RecipeWorkspace(folder)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_trains_embeds_and_exports(recipe, recipe_ws):
    from ensemble.commands.embed import embed_to_file
    from ensemble.deploy.export import export
    from ensemble.deploy.torchscript import jit_load
    from ensemble.workspace import load_model_file

    path = ROOT / recipe
    cfg = recipe_ws.run(path)
    student = isinstance(cfg, StudentCfg)
    run_dir = recipe_ws.workdir / ("students" if student else "members") / cfg.name
    seeds = [cfg.seed, *cfg.soup_seeds] if student else [cfg.seed]
    runs = [run_dir.parent / f"{cfg.name}_seed{s}" for s in seeds] if len(seeds) > 1 else [run_dir]  # a soup's runs
    records = [r for one in runs for r in _records(one)]

    # real optimiser steps, every stage, finite losses, under the recipe's own precision
    assert sum(r["images"] for r in records) > 0 and len(records) == sum(s.epochs for s in cfg.stages) * len(seeds)
    assert sum(r["steps"] for r in records) >= 2 and all(r["steps"] == 1 for r in records)
    assert all(math.isfinite(r["loss"]) for r in records)
    assert {r["autocast"] for r in records} == {"bfloat16" if cfg.optim.precision == "bf16" else None}
    if not student:  # the head's margin, epoch by epoch, as the recipe schedules it
        assert [r["margin_rad"] for r in records] == pytest.approx(
            [margin_at_epoch(cfg.head, r["global_epoch"]) for r in records])
    if cfg.optim.layer_decay:
        backbone_stages = [r for r in records if {"backbone", "all"} & set(r["train"])]
        assert backbone_stages and all(any(k.startswith("backbone.") for k in r["lr"]) for r in backbone_stages)

    file = load_model_file(run_dir / "best.pt", "student_model" if student else "member_model")
    model = file.model
    if len(seeds) > 1:  # the recipe's student is the mean of its runs' weights
        assert [one["name"] for one in file.extra["soup"]] == [one.name for one in runs]
    size = cfg.backbone.image_size or model.backbone.image_size
    assert file.preprocess["size_px"] == size
    if cfg.backbone.source == "open_clip":  # positional embedding resampled to the recipe's grid
        tower = model.backbone.tower
        assert tower.positional_embedding.shape[0] == (size // 14) ** 2 + 1
        trained = build_member_model(cfg, load_weights=False).backbone.tower  # as train-member/distill build it
        assert trained.transformer.grad_checkpointing == cfg.backbone.grad_checkpointing
        assert tower.transformer.grad_checkpointing is False  # a loaded file embeds and exports without it
        assert model.backbone.out_dim == (48 if cfg.backbone.drop_proj else 32)  # width 48, projection to 32

    spec = f"student:{cfg.name}" if student else cfg.name
    query = recipe_ws.folder / "query.csv"
    meta = embed_to_file(spec, recipe_ws.workdir, str(query), recipe_ws.folder / f"{cfg.name}.npy", workers=0)
    feats = np.load(recipe_ws.folder / f"{cfg.name}.npy")
    assert feats.shape == (4, meta["dim"]) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-3)  # float16 cache

    out = recipe_ws.folder / "exports" / f"{cfg.name}.pt"
    desc = export(spec, recipe_ws.workdir, out, sample=2, verify_manifest=str(query))
    assert desc["verify"]["min_cosine"] > 0.999
    scripted = jit_load(out)
    with torch.no_grad():
        emb = scripted(torch.randint(0, 256, (2, 3, 45, 70), dtype=torch.uint8))
    assert emb.shape == (2, desc["output_dim"]) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-4)
