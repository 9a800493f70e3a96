"""`ens train-member`: train one member from its recipe (resumes when rerun)."""

from __future__ import annotations

from collections.abc import Callable

from ..evaluate.report import score_text, sizes_text
from ..train.member import train_member
from ..train.plan import format_plan, plan
from ..train.recipe import load_recipe


def run(cfg_path: str, overrides: list[str], dry_run: bool, workdir: str, launch: Callable[[], None]) -> str:
    """Validate the recipe; print the plan (dry run) or launch, train and report."""
    cfg = load_recipe(cfg_path, overrides)
    if dry_run:
        return format_plan(plan(cfg))
    launch()
    result = train_member(cfg, workdir)
    return "" if "rank" in result else format_result(result)


def format_result(result: dict) -> str:
    """One table: untrained backbone vs the trained member's neck and backbone features."""
    if "trained" not in result:
        return f"member {result['name']}: trained (eval disabled)"
    rows = [("untrained backbone", result["untrained_backbone"]),
            ("trained, neck", result["trained"]["neck"]), ("trained, backbone", result["trained"]["backbone"])]
    domains = sorted(result["trained"]["neck"].get("per_domain", {}))
    macro = ["macro mP@5"] if "macro_mP@5" in result["trained"]["neck"] else []
    lines = [f"member {result['name']} (query vs index, flip TTA: {result['flip_tta']}, "
             f"{sizes_text(result)})",
             "| features | mP@5 | recall@1 | " + " | ".join(macro + domains) + " |",
             "|---|---|---|" + "---|" * len(macro + domains)]
    for name, r in rows:
        values = [r.get("macro_mP@5") for _ in macro] + [r["per_domain"][d] for d in domains]
        per = " | ".join(score_text(v) for v in values)
        lines.append(f"| {name} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {per} |")
    lines.append(f"unreadable training images skipped: {result.get('train_images_unreadable', 0)}")
    if overlap := result.get("transductive"):  # not open-set: the scores above are on images it trained on
        lines.append(f"transductive: trained on {overlap['eval_images']} of the query/index images")
    return "\n".join(lines)
