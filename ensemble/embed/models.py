"""Turn trained members into `Embedder`s for extraction (cache keys from checkpoint content)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import EnsError
from ..models.member import EmbeddingModel
from .extract import Embedder

FEATURES = ("neck", "backbone", "both")


def file_sha1(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def feature_fn(model: EmbeddingModel, features: str):
    """batch -> features: the neck embedding, the pooled backbone feature, or both concatenated."""
    def fn(x):
        pooled = model.backbone(x)
        if features == "backbone":
            return pooled
        neck = model.neck(pooled)
        return neck if features == "neck" else torch.cat([F.normalize(neck.float(), dim=-1),
                                                          F.normalize(pooled.float(), dim=-1)], dim=1)
    return fn


def model_embedder(model: EmbeddingModel, name: str, key: str, arch: str, features: str, device: torch.device,
                   size_px: int | None = None, channels_last: bool = False, info: dict | None = None) -> Embedder:
    """An Embedder over an in-memory member model."""
    if features not in FEATURES:
        raise EnsError(f"features: expected one of {FEATURES}, got {features!r}")
    if size_px and size_px != model.backbone.image_size and model.backbone.fixed_size:
        raise EnsError(f"{name}: eval.image_size {size_px} px, but this ViT takes only its training size "
                       f"{model.backbone.image_size} px (positional embedding); leave eval.image_size unset")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).eval()
    dims = {"neck": model.out_dim, "backbone": model.backbone.out_dim}
    out_dim = dims["neck"] + dims["backbone"] if features == "both" else dims[features]
    return Embedder(name, f"{key}:{features}", arch, size_px or model.backbone.image_size, model.backbone.mean,
                    model.backbone.std, out_dim, feature_fn(model, features), channels_last, info or {})


def load_member_embedder(workdir: str | Path, name: str, features: str | None, device: torch.device) -> Embedder:
    """The trained member `name` of the workspace (its best.pt), at its eval image size.

    features: neck | backbone | both; None means the member recipe's `eval.features`.
    """
    from ..member import MODEL_FILE, member_dir

    path = member_dir(workdir, name) / MODEL_FILE
    if not path.is_file():
        raise EnsError(f"member {name!r}: no trained model at {path} (run `ens train-member` first)")
    return embedder_from_file(path, name, "member_model", features, device)


def load_student_embedder(workdir: str | Path, name: str, device: torch.device) -> Embedder:
    """The trained student `name` (runs/students/<name>/best.pt); its output is the neck embedding."""
    from ..member import MODEL_FILE
    from ..student import student_dir

    path = student_dir(workdir, name) / MODEL_FILE
    if not path.is_file():
        raise EnsError(f"student {name!r}: no trained model at {path} (run `ens distill` first)")
    return embedder_from_file(path, f"student-{name}", "student_model", "neck", device)


def embedder_from_file(path: Path, name: str, kind: str, features: str | None, device: torch.device) -> Embedder:
    """An Embedder over a saved member or student model file."""
    from ..member import load_member_model

    model, payload = load_member_model(path, kind)
    cfg = payload["config"]
    arch = f"{cfg['backbone']['source']}:{cfg['backbone']['arch']}"
    features = features or cfg["eval"]["features"]
    return model_embedder(model, name, file_sha1(path), arch, features, device,
                          size_px=cfg["eval"]["image_size"], channels_last=cfg["backbone"]["channels_last"],
                          info={"checkpoint": str(path), "train_manifest_sha1": payload.get("train_manifest_sha1"),
                                "data": cfg["data"], "flip_tta": cfg["eval"]["flip_tta"], "model": model,
                                "features": features, "config": cfg, "describe": payload["describe"]})
