"""`ens eval`: mP@5 (GUIE), recall@1, mAP@100, per domain, for a MODEL; JSON, Markdown and PNG."""

from __future__ import annotations

from ..evaluate.report import markdown_table
from ..evaluate.run import evaluate


def run(spec, workdir, data, query, index, k, out, features, workers, approx_above) -> str:
    report = evaluate(spec, workdir, data, query, index, k, out, features, workers, approx_above)
    lines = [markdown_table([report], k).rstrip()]
    if "search" in report:
        s = report["search"]
        lines.append(f"approximate search (IVF-Flat, nlist {s['nlist']}, nprobe {s['nprobe']}): keeps "
                     f"{s['recall_vs_exact']:.3f} of the exact top-{max(k, 100)} on {s['checked_queries']} queries")
    lines.append("wrote " + ", ".join(report["files"]))
    return "\n".join(lines)
