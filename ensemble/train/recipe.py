"""What defines a run's weights: the recipe key that model files and checkpoints carry, and that
reusing, resuming and deriving a run compare."""

from __future__ import annotations

from ..config.schema import MemberCfg

NOT_DEFINING = {"loader": True, "eval": True, "device": True, "name": True, "data": True, "teacher": True,
                "backbone": {"channels_last"}}


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
