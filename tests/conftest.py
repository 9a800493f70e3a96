"""Shared fixtures: the real data in ../shared, a tiny open_clip ViT, small coil20 data configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COIL20 = SHARED / "data" / "coil20"
MOBILENET_V1 = SHARED / "weights" / "mobilenetv1_100.coral_in1k.safetensors"
TINY_VIT = "ens-test-tiny-vit"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (CI has ../shared)")
    return path


@pytest.fixture(scope="session", autouse=True)
def tiny_open_clip(tmp_path_factory):
    """Register a 2-block ViT as an open_clip model config (name TINY_VIT)."""
    import open_clip

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}
    path = tmp_path_factory.mktemp("oc") / f"{TINY_VIT}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TINY_VIT


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "domain"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def coil_rows(split: str, per_class: int, classes: int) -> list[dict]:
    rows, seen = [], {}
    for row in csv.DictReader(open(COIL20 / f"{split}.csv")):
        if seen.get(row["label"], 0) >= per_class or (row["label"] not in seen and len(seen) >= classes):
            continue
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        rows.append({**row, "path": str(COIL20 / row["path"])})
    return rows


def make_coil_data(folder: Path) -> Path:
    need_shared(COIL20)
    write_manifest(folder / "train.csv", coil_rows("train", 6, 4))
    write_manifest(folder / "query.csv", coil_rows("query", 1, 4))
    write_manifest(folder / "index.csv", coil_rows("index", 5, 4))
    cfg = folder / "data.yaml"
    cfg.write_text("train: train.csv\nquery: query.csv\nindex: index.csv\n")
    return cfg


@pytest.fixture()
def coil_data(tmp_path) -> Path:
    """A small coil20 data config: 4 train classes x 6 images, 4 query classes, 4 x 5 index."""
    return make_coil_data(tmp_path)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> Path:
    """A workspace with three tiny trained members: vit_a, vit_b (same arch, other seed), tvit (timm)."""
    from ensemble.config.load import load_member_cfg
    from ensemble.train.member import train_member

    folder = tmp_path_factory.mktemp("ws")
    data = make_coil_data(folder)
    one_epoch = ["stages=[{train: [all], epochs: 1}]", "eval.enabled=false"]
    train_member(load_member_cfg(tiny_recipe(folder, data, name="vit_a"), one_epoch), folder / "runs")
    train_member(load_member_cfg(tiny_recipe(folder, data, name="vit_b"), [*one_epoch, "seed=1"]), folder / "runs")
    timm_vit = ["backbone.source=timm", "backbone.arch=test_vit", "backbone.image_size=32"]
    train_member(load_member_cfg(tiny_recipe(folder, data, name="tvit"), [*one_epoch, *timm_vit]), folder / "runs")
    return folder / "runs"


def tiny_recipe(tmp_path: Path, data: Path, extra: str = "", name: str = "tiny") -> Path:
    """A member recipe on the tiny open_clip ViT, 2 short stages, CPU, no workers."""
    text = f"""
seed: 0
data: {data}
device: cpu
backbone: {{source: open_clip, arch: {TINY_VIT}, pretrained: null, image_size: 32}}
neck: {{dims: [8], dropout: 0.0}}
head: {{type: arcface, scale: 16.0, margin_rad: 0.2}}
sampler: {{min_per_class: 2, max_per_class: 8, oversample_to: 4}}
optim: {{lr: 1.0e-2, backbone_lr_scale: 0.1, batch_size: 8, warmup_epochs: 0, precision: fp32}}
loader: {{workers: 0}}
eval: {{batch_size: 16}}
stages:
  - {{train: [neck, head], epochs: 1}}
  - {{train: [all], epochs: 2}}
{extra}
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


STUDENT_SETS = ["teacher=teach", "neck.dims=[8]", "loss.sim_kl=0.5", "eval.enabled=false",
                "stages=[{train: [neck], epochs: 1}, {train: [all], epochs: 1}]"]


@pytest.fixture(scope="session")
def distilled_workspace(trained_workspace) -> Path:
    """A copy of trained_workspace's members plus ensemble `teach` (vit_a + tvit, signed square root, PCA 8)
    and a tiny student `stu` distilled from it. A copy: tests that add ensembles here never change what
    trained_workspace holds."""
    import shutil

    from ensemble.config.load import load_student_cfg
    from ensemble.config.schema import EnsembleCfg
    from ensemble.fuse.fit import fuse
    from ensemble.train.student import distill

    runs = trained_workspace.parent / "distilled" / "runs"
    shutil.copytree(trained_workspace / "members", runs / "members")
    for data in [*trained_workspace.parent.glob("*.csv"), trained_workspace.parent / "data.yaml"]:
        shutil.copy(data, runs.parent / data.name)  # the same data beside it (tests read ../query.csv etc.)
    fuse(EnsembleCfg.model_validate({"name": "teach", "members": ["vit_a", "tvit"], "features": "backbone",
                                     "power": 0.5, "pca": 8, "fit_on": "index", "workers": 0, "device": "cpu"}),
         runs)
    folder = runs.parent
    distill(load_student_cfg(tiny_recipe(folder, folder / "data.yaml", name="stu"), STUDENT_SETS), runs)
    return runs
