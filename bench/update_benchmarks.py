"""Replace one `## <title>` section of BENCHMARKS.md (created if missing) with a new table."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble.atomic import atomic_write_json, atomic_write_text  # noqa: E402

PATH = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery table is written by a script in `bench/` (command, date and machine inside it).\n"


def machine(accelerator: str = "no GPU") -> str:
    """The machine line every result records: architecture, usable cores, accelerator."""
    return f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {accelerator}"


def update_section(title: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    atomic_write_text(PATH, text.rstrip() + "\n")


def record(name: str, result: dict, title: str, body: str) -> None:
    """Store `result` as bench/results/<name>.json and put `body` under `## <title>` in BENCHMARKS.md."""
    atomic_write_json(PATH.parent / "bench" / "results" / f"{name}.json", result)
    update_section(title, body)


def domain_table(intro: str, rows: list[dict], lead: list[str]) -> str:
    """`intro`, then a Markdown table of `rows`: their `lead` keys, dim, macro and overall mP@5, one
    column per domain of the first row (n/a where a row has no score) and the seconds spent."""
    domains = sorted(rows[0]["per_domain"])
    lines = [intro, "", "| " + " | ".join([*lead, "dim", "macro mP@5", "overall mP@5", *domains, "s"]) + " |",
             "|" + "---|" * (len(lead) + len(domains) + 4)]
    for r in rows:
        per = ["n/a" if r["per_domain"].get(d) is None else f"{r['per_domain'][d]:.3f}" for d in domains]
        cells = [*(str(r[k]) for k in lead), str(r["dim"]), f"{r['macro_mP@5']:.3f}", f"{r['mP@5']:.3f}", *per,
                 f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
