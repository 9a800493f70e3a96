"""Self-describing artifacts, typed: model files (members, students) and fitted ensembles.

A model file carries the recipe that rebuilds it, the preprocessing used in training and its output
dim; an ensemble is `ensemble.yaml` (members with their checkpoint hashes, grouping, TTA, reducer
facts) plus `reducer.npz`. Loading checks what it reads; consumers use these objects, never
library defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..atomic import atomic_write_text
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config.schema import MemberCfg, StudentCfg
from ..errors import EnsError
from ..fuse.reducer import PCAReducer
from ..hashing import file_sha1
from ..models.backbone import pool_name
from ..models.member import EmbeddingModel, build_member_model, pool_as_embedded
from ..models.preprocess import preprocess_record
from .layout import ENSEMBLE_FILE, MODEL_FILE, REDUCER_FILE, Workspace

KINDS = {"member_model": MemberCfg, "student_model": StudentCfg}


@dataclass
class ModelFile:
    """A loaded member or student model file: the model (eval mode, CPU), its recipe and records."""

    path: Path
    kind: str  # member_model | student_model
    sha1: str  # of the file's bytes: cache keys and ensembles name models by it
    cfg: MemberCfg
    model: EmbeddingModel
    recipe_key: dict
    preprocess: dict
    describe: dict
    extra: dict = field(default_factory=dict)  # labels, teacher, train_manifest_sha1, failed_images

    @property
    def arch(self) -> str:
        return f"{self.cfg.backbone.source}:{self.cfg.backbone.arch}"

    @property
    def data(self) -> str | None:
        return str(self.cfg.data) if self.cfg.data else None

    @property
    def size_px(self) -> int:
        """The size the model embeds at: eval.image_size if the recipe set one, else its training size."""
        return self.cfg.eval.image_size or self.model.backbone.image_size

    @property
    def train_manifest_sha1(self) -> str | None:
        return self.extra.get("train_manifest_sha1")

    @property
    def failed_images(self) -> dict:
        return self.extra.get("failed_images") or {}


def save_model(path: Path, model: EmbeddingModel, cfg: MemberCfg, key: dict, kind: str = "member_model",
               **extra) -> None:
    """A self-describing model file: config to rebuild it, preprocessing, output dim (+ `extra`)."""
    bb = model.backbone
    describe = {**bb.describe(), "arch": cfg.backbone.arch, "embedding_dim": model.out_dim}
    if cfg.eval.gem_p:  # the file embeds by GeM whatever pooled in training (load_model_file)
        describe.update(pool=pool_name(cfg.eval.gem_p), pool_in_training=describe["pool"])
    save_checkpoint(path, {"ens_kind": kind, "config": cfg.model_dump(mode="json"), "recipe_key": key,
                           "model": model.state_dict(), **extra,
                           "preprocess": preprocess_record(bb.image_size, bb.mean, bb.std, cfg.augment.resize),
                           "describe": describe})


def load_model_file(path: str | Path, kind: str = "member_model") -> ModelFile:
    """Rebuild a member (or student, kind='student_model') from its model file alone: architecture
    from the stored config (no download), preprocessing as recorded at training time (the weights'
    own mean/std, not the library's defaults for the architecture)."""
    path = Path(path)
    payload = load_checkpoint(path, kind=kind)
    cfg = KINDS[kind].model_validate(payload["config"])
    cfg.backbone.pretrained = None
    model = build_member_model(cfg, load_weights=False)
    try:
        model.load_state_dict(payload.pop("model"))
    except RuntimeError as exc:
        raise EnsError(f"{path}: weights do not fit {cfg.backbone.arch} ({str(exc).splitlines()[0][:200]})") from None
    model.backbone.set_grad_checkpointing(False)  # a loaded file embeds or exports; it never trains
    # files from before the `preprocess` record carry the same facts in `describe`
    record = payload.get("preprocess") or payload["describe"]
    model.backbone.mean, model.backbone.std = tuple(record["mean"]), tuple(record["std"])
    model.backbone.image_size = int(record.get("size_px", record.get("image_size")))
    pool_as_embedded(model, cfg)
    known = {"ens_kind", "config", "recipe_key", "preprocess", "describe"}
    return ModelFile(path, kind, file_sha1(path), cfg, model.eval(), payload["recipe_key"], record,
                     payload["describe"], {k: v for k, v in payload.items() if k not in known})


def member_file(ws: Workspace, name: str) -> ModelFile:
    """The trained member `name` (runs/members/<name>/best.pt)."""
    path = ws.member_dir(name) / MODEL_FILE
    if not path.is_file():
        raise EnsError(f"member {name!r}: no trained model at {path} (run `ens train-member` first)")
    return load_model_file(path, "member_model")


def student_file(ws: Workspace, name: str) -> ModelFile:
    """The trained student `name` (runs/students/<name>/best.pt)."""
    path = ws.student_dir(name) / MODEL_FILE
    if not path.is_file():
        raise EnsError(f"student {name!r}: no trained model at {path} (run `ens distill` first)")
    return load_model_file(path, "student_model")


# ---------------------------------------------------------------- ensembles


@dataclass
class EnsembleFile:
    """A fitted ensemble as saved: its description (ensemble.yaml) and its reducer (None: concatenation)."""

    name: str
    folder: Path
    description: dict
    reducer: PCAReducer | None

    @property
    def member_names(self) -> list[str]:
        return [m["name"] for m in self.description["members"]]

    @property
    def member_keys(self) -> list[str]:
        """'<checkpoint sha1>:<features>' per member, as fitted."""
        return [m["key"] for m in self.description["members"]]

    @property
    def groups(self) -> list[list[int]]:
        return self.description["groups"]

    @property
    def power(self) -> float:
        """The signed power applied to member features before merging (1: none; files older than the
        option were all fitted without one)."""
        return float(self.description.get("power", 1.0))

    @property
    def features(self) -> str:
        return self.description["features"]

    @property
    def out_dim(self) -> int:
        return int(self.description["out_dim"])

    @property
    def config(self) -> dict:
        return self.description["config"]


def write_ensemble(ws: Workspace, description: dict, reducer: PCAReducer | None) -> EnsembleFile:
    """reducer.npz first, then ensemble.yaml naming the reducer's hash: a fuse killed in between is detected."""
    folder = ws.ensemble_dir(description["name"])
    if reducer is not None:
        reducer.save(folder / REDUCER_FILE)
        description["reducer"]["sha1"] = file_sha1(folder / REDUCER_FILE)
    else:
        (folder / REDUCER_FILE).unlink(missing_ok=True)
    description[CHECKSUM_KEY] = description_sha1(description)
    atomic_write_text(folder / ENSEMBLE_FILE, yaml.safe_dump(description, sort_keys=False))
    return EnsembleFile(description["name"], folder, description, reducer)


# what `ens fuse` writes into ensemble.yaml and its readers rely on: key -> (expected type(s), their name)
ENSEMBLE_KEYS = {"config": (dict, "a mapping"), "members": (list, "a list"), "features": (str, "a string"),
                 "groups": (list, "a list"), "tta": (dict, "a mapping"), "out_dim": (int, "an integer"),
                 "reducer": ((dict, type(None)), "a mapping or null")}


CHECKSUM_KEY = "description_sha1"


def description_sha1(description: dict) -> str:
    """SHA-1 of everything in ensemble.yaml but this checksum, as canonical JSON (YAML layout and key order
    do not count): an edit after `ens fuse` (a power, a member's size) would change the embedding silently."""
    body = {k: v for k, v in description.items() if k != CHECKSUM_KEY}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_description(path: Path) -> dict:
    """ensemble.yaml as `ens fuse` wrote it; anything else (not YAML, a key missing or of another type, a member
    entry without name or key) is a one-line EnsError naming the file and the key."""
    try:
        description = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EnsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    again = "written by `ens fuse`; run it again"
    if not isinstance(description, dict):
        raise EnsError(f"{path}: expected a mapping of keys ({again})")
    for key, (kind, expected) in ENSEMBLE_KEYS.items():
        if key not in description:
            raise EnsError(f"{path}: missing key {key!r} ({again})")
        value = description[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EnsError(f"{path}: key {key!r}: expected {expected}, got {type(value).__name__} ({again})")
    for i, member in enumerate(description["members"]):
        if not (isinstance(member, dict) and all(isinstance(member.get(k), str) for k in ("name", "key"))):
            raise EnsError(f"{path}: key 'members.{i}': expected a member entry with name and key ({again})")
    groups = description["groups"]
    as_ints = all(isinstance(g, list) and all(type(i) is int for i in g) for g in groups)
    if not as_ints or sorted(i for g in groups for i in g) != list(range(len(description["members"]))):
        raise EnsError(f"{path}: key 'groups': expected each member index 0-{len(description['members']) - 1} in "
                       f"exactly one group, got {description['groups']} ({again})")
    stored = description.get(CHECKSUM_KEY)  # files written before the checksum have none
    if stored is not None and stored != description_sha1(description):
        raise EnsError(f"{path}: content does not match its {CHECKSUM_KEY}: edited or damaged since it was {again}")
    return description


def saved_ensemble_config(ws: Workspace, name: str) -> dict | None:
    """The config an ensemble was fitted with, or None when there is none."""
    path = ws.ensemble_dir(name) / ENSEMBLE_FILE
    return read_description(path)["config"] if path.is_file() else None


def read_ensemble(ws: Workspace, name: str | None = None) -> EnsembleFile:
    """A fitted ensemble (default: the newest); refuses a reducer that does not match its yaml."""
    name = name or ws.newest_ensemble()
    folder = ws.ensemble_dir(name)
    if not (folder / ENSEMBLE_FILE).is_file():
        raise EnsError(f"ensemble {name!r}: not found at {folder} (run `ens fuse` first)")
    description = read_description(folder / ENSEMBLE_FILE)
    reducer = None
    if description["reducer"]:
        path = folder / REDUCER_FILE
        if not path.is_file() or file_sha1(path) != description["reducer"].get("sha1"):
            raise EnsError(f"ensemble {name!r}: {path} does not match {ENSEMBLE_FILE} (interrupted fuse?); "
                           "run `ens fuse` again")
        reducer = PCAReducer.load(path)
    return EnsembleFile(name, folder, description, reducer)
