"""Model soups (Wortsman et al., 2022): one model whose weights are the mean of several runs' weights.

The runs ("ingredients") are one student recipe trained with different seeds from the same starting
weights (a member's backbone, the least-squares neck), so they differ only in batch order and
augmentation and lie in one basin: their average embeds like one model, at one model's cost, and
scores at or above the runs' mean instead of one seed's draw. The soup's model file names its
ingredients (name, seed, sha1); it is rewritten when an ingredient's file changes.
"""

from __future__ import annotations

import logging

import torch

from ..atomic import atomic_write_text
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config.load import dump_cfg
from ..config.schema import StudentCfg
from ..hashing import file_sha1
from ..workspace.layout import MODEL_FILE, Workspace
from .rundir import check_recipe

log = logging.getLogger("ensemble")


def ingredient_cfg(cfg: StudentCfg, seed: int) -> StudentCfg:
    """The ordinary student run of `cfg` with `seed` (named `<name>_seed<seed>`, not evaluated)."""
    one = cfg.model_copy(update={"name": f"{cfg.name}_seed{seed}", "seed": seed, "soup_seeds": []}, deep=True)
    one.eval.enabled = False
    return one


def ingredient_cfgs(cfg: StudentCfg) -> list[StudentCfg]:
    """One ingredient per seed of the soup: `seed`, then `soup_seeds`."""
    return [ingredient_cfg(cfg, seed) for seed in (cfg.seed, *cfg.soup_seeds)]


def mean_weights(states: list[dict]) -> dict:
    """The uniform average of floating-point tensors (integer buffers, e.g. BN counts: the first's)."""
    return {key: (torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                  if value.is_floating_point() else value)
            for key, value in states[0].items()}


def save_soup(cfg: StudentCfg, key: dict, ws: Workspace, ingredients: list[StudentCfg]) -> None:
    """Write the soup's model file: the mean of its trained `ingredients` (kept while they are unchanged)."""
    files = [ws.student_dir(one.name) / MODEL_FILE for one in ingredients]
    named = [{"name": one.name, "seed": one.seed, "sha1": file_sha1(f)} for one, f in zip(ingredients, files)]
    run_dir = ws.student_dir(cfg.name)
    path = run_dir / MODEL_FILE
    saved = check_recipe(path, "student_model", key)
    if saved is not None and saved.get("soup") == named:
        log.info("student %s: the soup of %s is already saved; reusing %s", cfg.name,
                 ", ".join(n["name"] for n in named), path)
        return
    payloads = [load_checkpoint(f, kind="student_model") for f in files]
    log.info("student %s: the mean of the weights of %s", cfg.name, ", ".join(n["name"] for n in named))
    atomic_write_text(run_dir / "config.yaml", dump_cfg(cfg))
    failed = {k: v for p in payloads for k, v in (p.get("failed_images") or {}).items()}
    # the first run's file as it is (teacher, preprocessing and description as trained), with the mean weights
    save_checkpoint(path, {**payloads[0], "config": cfg.model_dump(mode="json"), "recipe_key": key,
                           "model": mean_weights([p["model"] for p in payloads]), "failed_images": failed,
                           "soup": named})
