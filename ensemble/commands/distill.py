"""`ens distill`: train a student on the fused ensemble's embedding (resumes when rerun)."""

from __future__ import annotations

from collections.abc import Callable

from ..evaluate.report import score_text, sizes_text
from ..train.plan import format_plan, plan
from ..train.recipe import load_recipe
from ..train.student import distill


def run(cfg_path: str, overrides: list[str], dry_run: bool, workdir: str, launch: Callable[[], None]) -> str:
    """Validate the recipe; print the plan (dry run) or launch, distil and report."""
    cfg = load_recipe(cfg_path, overrides, student=True)
    if dry_run:
        return format_plan(plan(cfg), kind="student")
    launch()
    result = distill(cfg, workdir)
    return "" if "rank" in result else format_result(result)


def format_result(result: dict) -> str:
    if "student" not in result:
        return f"student {result['name']}: trained (eval disabled)"
    r = result["student"]
    domains = sorted(r.get("per_domain", {}))
    return (f"student {result['name']} (teacher ensemble {result['teacher']}, {sizes_text(result)}, "
            f"flip TTA: {result['flip_tta']}): mP@5 {r['mP@5']:.3f}, recall@1 {r['recall@1']:.3f}"
            + (f", macro mP@5 {r['macro_mP@5']:.3f}" if r.get("macro_mP@5") is not None else "")
            + "".join(f", {d} {score_text(r['per_domain'][d])}" for d in domains))

