"""Training recipes: loaded with every check that needs the data layer, and what defines a run's weights
(the recipe key that model files and checkpoints carry, and that reusing, resuming and deriving a run compare)."""

from __future__ import annotations

from pathlib import Path

from ..config.load import load_member_cfg
from ..config.schema import MemberCfg, StudentCfg
from ..data.augment import check_augment
from ..errors import EnsError

NOT_DEFINING = {"loader": True, "eval": True, "device": True, "name": True, "data": True, "teacher": True,
                "backbone": {"channels_last"}}


def load_recipe(path: str | Path, overrides: list[str] | None = None, student: bool = False) -> MemberCfg:
    """A member (or student) recipe as training reads it: validated, and its augmentations built once, so a
    bad op setting fails here in one line naming the file, not at the first batch after the weights load."""
    cfg = load_member_cfg(path, overrides, StudentCfg if student else MemberCfg)
    try:
        check_augment(cfg.augment)
    except EnsError as exc:
        raise EnsError(f"{path}: {exc}") from None
    return cfg


def recipe_key(cfg: MemberCfg, **inputs: str) -> dict:
    """What defines a run's weights: its recipe without loader/eval/device keys, plus the content
    hashes of its inputs (train manifest; distill manifest and teacher)."""
    return {**defining(cfg.model_dump(mode="json")), **inputs}


def defining(dumped: dict) -> dict:
    """A dumped config without the keys in NOT_DEFINING."""
    out = {}
    for key, value in dumped.items():
        rule = NOT_DEFINING.get(key)
        if rule is True:
            continue
        out[key] = {k: v for k, v in value.items() if k not in rule} if rule and isinstance(value, dict) else value
    return out
