"""Human-readable eval outputs: a Markdown table and a PNG grid of queries with their top-5."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file, atomic_write_text
from ..data.decode import DecodeError, decode_image
from ..data.manifest import Manifest


def score_text(value, digits: int = 3) -> str:
    """A score for a table: fixed decimals, "n/a" where there is none (a domain without queries)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def sizes_text(result: dict) -> str:
    """The sizes an eval result embedded at: "260 px", or "260+300 px" with multi-scale TTA."""
    return "+".join(map(str, [result["eval_image_size"], *result.get("eval_extra_sizes", [])])) + " px"


def markdown_table(reports: list[dict], k: int = 5) -> str:
    """One row per report: model, dim, mP@k, recall@1, mAP@100, then mP@k per domain."""
    domains = sorted({d for r in reports for d in r.get("per_domain", {})})
    macro = [f"macro_mP@{k}"] if any(f"macro_mP@{k}" in r for r in reports) else []
    columns = [f"mP@{k}", "recall@1", "mAP@100", *macro]
    lines = ["| model | dim | %s | %s |" % (" | ".join(c.replace("_", " ") for c in columns), " | ".join(domains)),
             "|---|---|" + "---|" * (len(columns) + len(domains))]
    for r in reports:
        cells = [score_text(r.get(c)) for c in columns] + [score_text(r.get("per_domain", {}).get(d)) for d in domains]
        lines.append(f"| {model_label(r)} | {r.get('dim', '')} | " + " | ".join(cells) + " |")
    excluded = sum(r.get("excluded_queries", 0) for r in reports)
    if excluded:
        lines.append(f"\n{excluded} queries had no relevant index image and were excluded (GUIE rule).")
    lines += transductive_notes(reports)
    return "\n".join(lines) + "\n"


def model_label(row: dict) -> str:
    """The model's name, marked when it was fitted partly on the images it is scored on."""
    return f"{row['model']} (transductive)" if row.get("transductive") else row["model"]


def transductive_notes(rows: list[dict]) -> list[str]:
    """One line per transductive row: how many evaluated images fitted it, and through which sets."""
    return [f"transductive: {r['model']} was fitted on {r['transductive']['eval_images']} of the query/index "
            f"images ({', '.join(r['transductive']['via'])})" for r in rows if r.get("transductive")]


def write_markdown(path: Path, reports: list[dict], k: int = 5) -> None:
    atomic_write_text(path, markdown_table(reports, k))


def thumbnail(path: str, size_px: int = 96) -> np.ndarray:
    """A square RGB thumbnail (grey for an unreadable image)."""
    from PIL import Image

    try:
        img = Image.fromarray(decode_image(path, draft_px=size_px))
    except DecodeError:
        return np.full((size_px, size_px, 3), 128, np.uint8)
    img.thumbnail((size_px, size_px))
    canvas = Image.new("RGB", (size_px, size_px), (255, 255, 255))
    canvas.paste(img, ((size_px - img.width) // 2, (size_px - img.height) // 2))
    return np.asarray(canvas)


def example_queries(q: Manifest, x: Manifest, neighbors: np.ndarray, rows: int) -> list[int]:
    """Half the grid shows queries whose top-1 is wrong (the interesting ones), half spread evenly."""
    wrong = [i for i in range(len(q)) if x.labels[neighbors[i, 0]] != q.labels[i]]
    spread = np.linspace(0, len(q) - 1, rows).astype(int).tolist()
    picked = list(dict.fromkeys(wrong[: rows // 2] + spread))
    return picked[:rows]


def write_png(path: Path, q: Manifest, x: Manifest, neighbors: np.ndarray, title: str, rows: int = 8) -> None:
    """Grid: each row a query and its top-k; green frame = same label, red = different."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = example_queries(q, x, neighbors, min(rows, len(q)))
    k = neighbors.shape[1]
    fig, axes = plt.subplots(len(picked), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(picked)), squeeze=False)
    for r, qi in enumerate(picked):
        cells = [(q.paths[qi], f"query\n{q.labels[qi][:18]}", "black")]
        cells += [(x.paths[j], x.labels[j][:18], "green" if x.labels[j] == q.labels[qi] else "red")
                  for j in neighbors[qi]]
        for c, (img_path, label, colour) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(thumbnail(img_path))
            ax.set_title(label, fontsize=6, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if c else 1)
    fig.suptitle(f"{title}: queries and their top-{k} (green = relevant)", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(path) as handle:
            fig.savefig(handle, dpi=90, format="png")
    finally:
        plt.close(fig)
