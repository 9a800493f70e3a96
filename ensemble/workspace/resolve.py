"""MODEL names -> one typed `ResolvedModel` that every command uses.

Grammar: a member name, `ensemble` / `ensemble:<name>` (default: the newest ensemble),
`student:<name>`, or an exported file (`.pt` TorchScript, `.onnx`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import Manifest
from ..deploy.exported import FORMATS, embed_exported, read_meta
from ..device import pick_device
from ..distributed import device_for, world
from ..embed.cache import embed_manifest
from ..embed.embedder import model_embedder
from ..embed.extract import TTA, Embedder
from ..errors import EnsError
from ..fuse.combine import fuse_features
from ..fuse.graph import EmbeddingGraph, FusionHead, MemberBranch, power_identity
from ..hashing import file_sha1
from .artifacts import EnsembleFile, ModelFile, member_file, read_ensemble, student_file
from .layout import Workspace


@dataclass(frozen=True)
class ModelRef:
    """A parsed MODEL string."""

    kind: str  # member | ensemble | student | export
    name: str | None  # None: the newest ensemble
    path: Path | None = None  # exported files

    @classmethod
    def parse(cls, spec: str | None) -> ModelRef:
        spec = spec or "ensemble"
        if spec == "ensemble" or spec.startswith("ensemble:"):
            return cls("ensemble", spec.partition(":")[2] or None)
        if spec.startswith("student:"):
            if not spec.partition(":")[2]:
                raise EnsError(f"MODEL {spec!r}: expected student:<name>")
            return cls("student", spec.partition(":")[2])
        if Path(spec).suffix in FORMATS:
            return cls("export", Path(spec).name, Path(spec))
        return cls("member", spec)


@dataclass
class Part:
    """One model file inside a resolved MODEL: the file, the feature taken from it, its embedder."""

    file: ModelFile
    features: str
    embedder: Embedder


@dataclass
class ResolvedModel:
    """What a MODEL names: the model files it runs, how their features become one embedding, its TTA
    and its default data config. Exported files run themselves (`exported`)."""

    name: str
    kind: str  # member | ensemble | student | export
    tta: TTA
    data: str | None
    parts: list[Part]
    head: FusionHead | None = None
    ensemble: EnsembleFile | None = None
    exported: Path | None = None
    device: torch.device = torch.device("cpu")  # where its modules sit and every embedding runs (resolve time)

    @property
    def out_dim(self) -> int:
        if self.ensemble is not None:
            return self.ensemble.out_dim
        if self.exported is not None:
            return int(read_meta(self.exported)["output_dim"])
        return self.parts[0].embedder.out_dim

    @property
    def embedders(self) -> list[Embedder]:
        return [p.embedder for p in self.parts]

    def combine(self, features: list[np.ndarray]) -> np.ndarray:
        """Part features (in part order) -> the model's embedding."""
        return fuse_features(self.head, features, [p.embedder.out_dim for p in self.parts], self.name)

    def embed(self, manifest: Manifest, ws: Workspace, tta: TTA | None = None, workers: int = 2,
              batch_size: int = 64, cache: bool = True) -> np.ndarray:
        """The model's embedding of every manifest row on `self.device` (part features cached in the
        workspace unless cache=False; sharded across ranks in a multi-process run)."""
        if self.exported is not None:
            return embed_exported(self.exported, manifest, ws.cache_dir if cache else None, workers, self.device)
        return self.combine(self.part_features(manifest, ws, tta, workers, batch_size, cache))

    def part_features(self, manifest: Manifest, ws: Workspace, tta: TTA | None = None, workers: int = 2,
                      batch_size: int = 64, cache: bool = True) -> list[np.ndarray]:
        """Each part's own feature of every manifest row, before fusion (as `embed` caches them)."""
        if self.exported is not None:
            raise EnsError(f"MODEL {self.exported}: an exported file has no separate part features")
        return embed_manifest(self.embedders, manifest, ws.cache_dir, self.device, tta or self.tta, batch_size,
                              workers, use_cache=cache)

    def identity(self) -> dict:
        """What makes two models embed alike: their files' hashes and features, fusion and TTA."""
        if self.exported is not None:
            return {"kind": "export", "sha1": file_sha1(self.exported)}
        reducer = self.ensemble.description["reducer"] if self.ensemble is not None else None
        return {"kind": self.kind, "parts": [p.embedder.key for p in self.parts],
                "groups": self.head.groups if self.head is not None else None,
                "reducer_sha1": (reducer or {}).get("sha1"), "tta": self.tta.describe(),
                **power_identity(self.head.power if self.head is not None else 1.0)}

    def graph(self, dtype: torch.dtype = torch.float32) -> EmbeddingGraph:
        """The whole model as one torch module on CPU (uint8 images in, embeddings out): what export traces
        and budget times. It shares the parts' modules (no copy of ViT-sized weights): they move to the
        CPU in `dtype` (the members' weights; fusion stays float32), and wherever the caller then moves
        the graph."""
        if self.exported is not None:
            raise EnsError(f"MODEL {self.exported}: already an exported file")
        extra = list(self.tta.extra_sizes)
        branches = [MemberBranch(p.file.model.cpu().to(dtype).eval(), p.features, p.embedder.sizes(extra),
                                 p.embedder.mean, p.embedder.std, self.tta.flip, dtype) for p in self.parts]
        return EmbeddingGraph(branches, self.head).eval()


def _part(file: ModelFile, name: str, features: str, device: torch.device) -> Part:
    emb = model_embedder(file.model, name, file.sha1, file.arch, features, device, size_px=file.cfg.eval.image_size,
                         channels_last=file.cfg.backbone.channels_last, precision=file.cfg.eval.precision,
                         extra_sizes=tuple(file.cfg.eval.extra_sizes))
    return Part(file, features, emb)


def resolve_model(spec: str | None, workdir: str | Path | Workspace, features: str | None = None,
                  device: torch.device | None = None) -> ResolvedModel:
    """Load what MODEL names (see the module docstring) onto `device` (default: an ensemble's recipe
    device, otherwise the accelerator if there is one; under torchrun each rank's own), where it also
    embeds; `features` overrides a member's eval.features."""
    ws, ref = Workspace.at(workdir), ModelRef.parse(spec)
    if ref.kind == "ensemble":
        return _ensemble(ws, ref.name, features, device)
    device = device_for(world(), device or pick_device("auto"))
    if ref.kind == "export":
        return _exported(ref.path, device)
    if ref.kind == "student":
        if features and features != "neck":
            raise EnsError(f"--features {features}: a student has one output, its embedding")
        file = student_file(ws, ref.name)
        part = _part(file, f"student-{ref.name}", "neck", device)
        return ResolvedModel(f"student:{ref.name}", "student", TTA(flip=file.cfg.eval.flip_tta), file.data, [part],
                             FusionHead([[0]]), device=device)
    file = member_file(ws, ref.name)
    part = _part(file, ref.name, features or file.cfg.eval.features, device)
    return ResolvedModel(ref.name, "member", TTA(flip=file.cfg.eval.flip_tta), file.data, [part], FusionHead([[0]]),
                         device=device)


def load_members(ws: Workspace, names: list[str], features: str | None, device: torch.device) -> list[Part]:
    """Trained members by name, each embedding its `features` (None: the member's eval.features)."""
    parts = []
    for name in names:
        file = member_file(ws, name)
        parts.append(_part(file, name, features or file.cfg.eval.features, device))
    return parts


def _ensemble(ws: Workspace, name: str | None, features: str | None, device) -> ResolvedModel:
    ens = read_ensemble(ws, name)
    if features and features != ens.features:
        raise EnsError(f"--features {features}: ensemble {ens.name!r} was fitted on {ens.features} features")
    device = device_for(world(), device or pick_device(ens.config["device"]))
    parts = load_members(ws, ens.member_names, ens.features, device)
    for part, key in zip(parts, ens.member_keys, strict=True):
        if part.embedder.key != key:
            raise EnsError(f"ensemble {ens.name!r}: member {part.embedder.name!r} changed since the ensemble was "
                           "fitted (checkpoint hash differs); run `ens fuse` again")
    tta = ens.description["tta"]
    return ResolvedModel(f"ensemble:{ens.name}", "ensemble", TTA(tta["flip"], tuple(tta["extra_sizes"])),
                         parts[0].file.data, parts, FusionHead(ens.groups, ens.reducer, ens.power), ens, device=device)


def _exported(path: Path, device: torch.device) -> ResolvedModel:
    if not path.is_file():
        raise EnsError(f"MODEL {path}: exported file not found")
    meta = read_meta(path)
    return ResolvedModel(f"export:{path.name}", "export", TTA(flip=meta["flip_tta"]), meta.get("data"), [],
                         exported=path, device=device)
