"""Scoring an in-memory model on its recipe's query/index split (what training reports)."""

from __future__ import annotations

from pathlib import Path

from ..config.load import load_data_cfg
from ..config.schema import MemberCfg
from ..data.manifest import read_eval_pair, read_manifest
from ..device import pick_device
from ..embed.embedder import model_embedder
from ..embed.extract import TTA, extract_many
from ..errors import EnsError
from ..hashing import file_sha1
from ..models.member import EmbeddingModel
from .metrics import evaluate_embeddings


def evaluate_model(model: EmbeddingModel, cfg: MemberCfg) -> dict:
    """mP@5 / recall@1 / per-domain of the neck and the backbone features on the query vs index split.

    One pass per image computes both features (each flip-averaged and L2-normalised on its own).
    """
    data = load_data_cfg(cfg.data)
    if data.query is None or data.index is None:
        raise EnsError(f"{cfg.data}: keys 'query' and 'index' are needed to evaluate")
    query, index = read_eval_pair(data.query, data.index)
    device = pick_device(cfg.device)
    emb = model_embedder(model, cfg.name, "eval", cfg.backbone.arch, "both", device, cfg.eval.image_size,
                         cfg.backbone.channels_last, precision=cfg.eval.precision,
                         extra_sizes=tuple(cfg.eval.extra_sizes))
    blocks = {emb.name: [model.out_dim, model.backbone.out_dim]}
    q, i = (extract_many([emb], m.paths, device, TTA(flip=cfg.eval.flip_tta), cfg.eval.batch_size,
                         cfg.loader.workers, cfg.loader.max_fail_ratio, f"embed {name}", blocks)[0]
            for name, m in (("query", query), ("index", index)))
    dim = model.out_dim
    return {feat: evaluate_embeddings(qf, query.labels, xf, index.labels, 5, query.domains)
            for feat, (qf, xf) in (("neck", (q[:, :dim], i[:, :dim])), ("backbone", (q[:, dim:], i[:, dim:])))}


def eval_key(cfg: MemberCfg, model_path: Path) -> dict:
    """What an eval result depends on: eval settings, the query/index manifests, the model file."""
    return {**_eval_inputs(cfg, _settings(cfg)), "model_sha1": file_sha1(model_path)}


def untrained_key(cfg: MemberCfg) -> dict:
    """What the untrained backbone's score depends on: eval settings (whether eval is on aside), the
    manifests, the backbone config and its weights file."""
    weights = cfg.backbone.pretrained
    sha1 = file_sha1(weights) if weights and Path(weights).is_file() else None
    return {**_eval_inputs(cfg, _settings(cfg, exclude={"enabled"})),
            "backbone": cfg.backbone.model_dump(mode="json"), "weights_sha1": sha1}


def _settings(cfg: MemberCfg, exclude: set[str] = frozenset()) -> dict:
    # no extra sizes keeps the key of results cached before eval.extra_sizes existed
    return cfg.eval.model_dump(mode="json", exclude={*exclude, *(() if cfg.eval.extra_sizes else ("extra_sizes",))})


def _eval_inputs(cfg: MemberCfg, settings: dict) -> dict:
    data = load_data_cfg(cfg.data)
    manifests = {k: read_manifest(getattr(data, k)).located_sha1 if getattr(data, k) else None
                 for k in ("query", "index")}
    return {"eval": settings, "data": str(cfg.data), **manifests}
