"""Load YAML recipes into validated config objects, with `--set key.sub=value` overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import EnsError, file_problem
from .schema import BackboneCfg, DataCfg, MemberCfg, StudentCfg

T = TypeVar("T", bound=BaseModel)
M = TypeVar("M", bound=MemberCfg)
log = logging.getLogger("ensemble")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping is a one-line EnsError."""
    path = Path(path)
    if problem := file_problem(path, "YAML file"):
        raise EnsError(f"{path}: {problem}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EnsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise EnsError(f"{path}: expected a mapping of keys at the top level")
    return raw


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `a.b=value` overrides; values are parsed as YAML (numbers, lists, null)."""
    for item in overrides or []:
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        if "=" not in item or not all(part.strip() for part in parts):
            raise EnsError(f"{source} {item!r}: expected key.sub=value")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise EnsError(f"{source} {item!r}: {part!r} is not a mapping")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise EnsError(f"{source} {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return raw


def format_validation(path: str | Path, exc: ValidationError) -> str:
    """One line naming the file, the key and what was expected."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    if err["type"] == "missing":
        return f"{path}: missing required key '{key}'"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{path}: key '{key}': {err['msg']}{shown}{more}"


def validate(model: type[T], raw: dict, path: str | Path) -> T:
    """Validate a raw mapping into `model`, converting errors to one-line EnsError."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise EnsError(format_validation(path, exc)) from None


def _resolve_weights(value: str | None, base: Path) -> str | None:
    """A `pretrained` value that looks like a file is resolved relative to the recipe."""
    if value is None or not _looks_like_file(value):
        return value
    candidate = Path(value).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    if not candidate.is_file():
        raise EnsError(f"backbone.pretrained: weights file not found: {candidate}")
    check_weights_file(candidate)
    return str(candidate.resolve())


def check_weights_file(path: Path) -> None:
    """Cheap checks that a weights file is what its name says (an empty, truncated or foreign file
    fails here, at config load and --dry-run, not at the first step with a library traceback)."""
    size = path.stat().st_size
    if size == 0:
        raise EnsError(f"backbone.pretrained: {path} is empty")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:  # SafetensorError and others: the header does not describe this file
            raise EnsError(f"backbone.pretrained: {path} is not a valid safetensors file "
                           f"({str(exc).splitlines()[0][:160]})") from None
        if not keys:
            raise EnsError(f"backbone.pretrained: {path} holds no tensors")
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch zip archive, or a legacy pickle
            raise EnsError(f"backbone.pretrained: {path} is not a torch checkpoint (zip or pickle)")


def deep_merge(base: dict, diff: dict) -> dict:
    """`diff` over `base`: mappings merge key by key, anything else replaces; an empty mapping
    replaces too (`model_kwargs: {}` clears the base's kwargs for another architecture)."""
    out = dict(base)
    for key, value in diff.items():
        merge = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if merge else value
    return out


def read_recipe(path: Path, depth: int = 0) -> dict:
    """A recipe YAML with `base: other.yaml` resolved (relative paths in the base stay relative to it)."""
    raw = read_yaml(path)
    if "base" not in raw:
        return raw
    if depth > 8:
        raise EnsError(f"{path}: key 'base': too many nested bases (a cycle?)")
    base_path = (path.parent / str(raw.pop("base"))).resolve()
    base = _rebase(read_recipe(base_path, depth + 1), base_path.parent)
    base.pop("name", None)
    return deep_merge(base, raw)


def _rebase(recipe: dict, folder: Path) -> dict:
    """Relative paths of a base recipe (`data`, weight files in `backbone.pretrained` and its
    fallback) made absolute from the base's folder, so they mean the same from any inheriting file."""
    def absolute(value):
        if not isinstance(value, str) or not _looks_like_file(value) or Path(value).expanduser().is_absolute():
            return value
        return str(folder / value)

    if "data" in recipe and not Path(str(recipe["data"])).is_absolute():
        recipe["data"] = str(folder / str(recipe["data"]))
    for block in (recipe.get("backbone"), (recipe.get("backbone") or {}).get("fallback")):
        if isinstance(block, dict) and "pretrained" in block:
            block["pretrained"] = absolute(block["pretrained"])
    return recipe


def _looks_like_file(value: str) -> bool:
    return value.endswith(WEIGHT_SUFFIXES) or ("/" in value and not value.startswith("hf-hub:"))


def load_member_cfg(path: str | Path, overrides: list[str] | None = None, schema: type[M] = MemberCfg) -> M:
    """Load a member (or, with schema=StudentCfg, student) recipe: validate, resolve paths,
    fill `name` from the file stem."""
    path = Path(path)
    raw = apply_overrides(read_recipe(path), overrides or [])
    cfg = validate(schema, raw, path)
    base = path.resolve().parent
    data = cfg.data if cfg.data.is_absolute() else (base / cfg.data)
    if not data.is_file():
        raise EnsError(f"{path}: key 'data': data config not found: {data}")
    cfg.data = data.resolve()
    try:
        cfg.backbone.pretrained = _resolve_weights(cfg.backbone.pretrained, base)
    except EnsError as exc:
        if cfg.backbone.fallback is None:
            raise EnsError(f"{path}: {exc}") from None
        cfg.backbone = _fallback_backbone(cfg.backbone, path)
        cfg.backbone.pretrained = _resolve_weights(cfg.backbone.pretrained, base)
    if cfg.name is None:
        try:
            cfg.name = path.stem
        except ValidationError:
            raise EnsError(f"{path}: the file name {path.stem!r} is not a valid run name; set `name:` "
                           "(letters, digits, '_', '.', '-')") from None
    return cfg


def load_student_cfg(path: str | Path, overrides: list[str] | None = None) -> StudentCfg:
    """Load a student (distillation) recipe."""
    return load_member_cfg(path, overrides, StudentCfg)


def _fallback_backbone(cfg: BackboneCfg, path: Path) -> BackboneCfg:
    """The backbone with its `fallback` keys applied (the `pretrained` file is missing)."""
    arch = str(cfg.fallback.get("arch", cfg.arch))
    if arch.split(".")[0] != cfg.arch.split(".")[0]:
        raise EnsError(f"{path}: backbone.pretrained {cfg.pretrained} not found, and backbone.fallback would "
                       f"replace arch {cfg.arch!r} with {arch!r}; give the weights file or a fallback for {cfg.arch}")
    log.warning("%s: backbone.pretrained %s not found; using backbone.fallback %s", path, cfg.pretrained, cfg.fallback)
    merged = deep_merge(cfg.model_dump(mode="json"), cfg.fallback)
    merged["fallback"] = None
    return validate(BackboneCfg, merged, f"{path} (backbone.fallback)")


def load_data_cfg(path: str | Path) -> DataCfg:
    """Load a data config; manifests are resolved relative to its folder and must exist."""
    path = Path(path)
    cfg = validate(DataCfg, read_yaml(path), path)
    base = path.resolve().parent
    for key in ("train", "query", "index", "distill"):
        value = getattr(cfg, key)
        if value is None:
            continue
        full = value if value.is_absolute() else base / value
        if problem := file_problem(full, "manifest"):
            raise EnsError(f"{path}: key '{key}': {full}: {problem}")
        setattr(cfg, key, full.resolve())
    return cfg


def dump_cfg(cfg: BaseModel) -> str:
    """The resolved config as YAML (paths as strings), for saving beside artifacts."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
