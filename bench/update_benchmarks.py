"""Replace one `## <title>` section of BENCHMARKS.md (created if missing) with a new table."""

from __future__ import annotations

import re
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery table is written by a script in `bench/` (command, date and machine inside it).\n"


def update_section(title: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    PATH.write_text(text.rstrip() + "\n")


def record(name: str, result: dict, title: str, body: str) -> None:
    """Store `result` as bench/results/<name>.json and put `body` under `## <title>` in BENCHMARKS.md."""
    import json

    results = PATH.parent / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2))
    update_section(title, body)
