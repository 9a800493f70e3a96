"""One self-contained HTML page a person opens: the summary table and, per model, its worst queries
with their top-k (thumbnails embedded, relevant neighbours marked, distances, file names)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..data.manifest import Manifest
from .report import model_label, score_text, thumbnail

EXAMPLES = 12
CHOICE = ("the {n} queries with the lowest P@{k}, ties in manifest order, among the queries that have a "
          "relevant index image")


def examples(q: Manifest, x: Manifest, q_emb: np.ndarray, x_emb: np.ndarray, neighbors: np.ndarray, k: int,
             n: int = EXAMPLES) -> list[dict]:
    """The worst `n` queries by P@k (GUIE's: hits in the top min(n_q, k)), each with its top-k."""
    index_labels = np.asarray(x.labels)
    counts = dict(zip(*np.unique(index_labels, return_counts=True), strict=True))
    scored = []
    for i, label in enumerate(q.labels):
        if counts.get(label, 0):
            cut = min(int(counts[label]), k)
            scored.append((float((index_labels[neighbors[i, :cut]] == label).mean()), i))
    out = []
    for precision, i in sorted(scored)[:n]:
        top = neighbors[i, :k]
        dist = np.linalg.norm(x_emb[top] - q_emb[i], axis=1)
        out.append({"query": q.paths[i], "label": q.labels[i], "precision": precision,
                    "neighbours": [{"path": x.paths[j], "label": x.labels[j], "distance": float(d),
                                    "relevant": x.labels[j] == q.labels[i]} for j, d in zip(top, dist, strict=True)]})
    return out


def _img(path: str, size_px: int = 96) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(thumbnail(path, size_px)).save(buffer, format="JPEG", quality=80)
    return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _cell(path: str, caption: str, css: str) -> str:
    name = html.escape(Path(path).name)
    return (f'<figure class="{css}"><img src="{_img(path)}" alt="{name}" title="{html.escape(path)}">'
            f"<figcaption>{caption}<br><small>{name}</small></figcaption></figure>")


def summary_table(rows: list[dict], k: int) -> str:
    """Model, dim, mP@k, recall@1, per-domain mP@k and cost where known."""
    domains = sorted({d for r in rows for d in r.get("per_domain", {})})
    macro = [f"macro mP@{k}"] if any(f"macro_mP@{k}" in r for r in rows) else []
    head = ["model", "dim", f"mP@{k}", "recall@1", *macro, *domains, "GFLOP/image", "ms/image"]
    lines = ["<table class='summary'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = [model_label(r), r.get("dim", ""), score_text(r[f"mP@{k}"]), score_text(r["recall@1"]),
                 *[score_text(r.get(f"macro_mP@{k}")) for _ in macro],
                 *[score_text(r.get("per_domain", {}).get(d)) for d in domains],
                 score_text(r.get("gflops_per_image"), 2), score_text(r.get("ms_per_image"), 1)]
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(lines) + "</table>"


def model_section(report: dict) -> str:
    """The model's worst queries, each followed by its top-k."""
    k, shown = report["k"], report.get("examples", [])
    parts = [f"<h2>{html.escape(report['model'])}</h2>",
             f"<p class='choice'>Shown: {html.escape(CHOICE.format(n=len(shown), k=k))}. Green: same label as "
             "the query; red: another label; the number is the Euclidean distance.</p>"]
    for ex in shown:
        cells = [_cell(ex["query"], f"query {html.escape(ex['label'])} (P@{k} {ex['precision']:.2f})", "query")]
        cells += [_cell(n["path"], f"{html.escape(n['label'])} {n['distance']:.3f}",
                        "hit" if n["relevant"] else "miss") for n in ex["neighbours"]]
        parts.append("<div class='row'>" + "".join(cells) + "</div>")
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}td:first-child{text-align:left}.row{display:flex;gap:6px;margin:6px 0}
figure{margin:0;width:104px;font-size:11px;text-align:center}figure img{width:96px;height:96px;border:4px solid}
.query img{border-color:#333}.hit img{border-color:#2a2}.miss img{border-color:#d22}
small{color:#666;word-break:break-all}"""


# after load the page records how many thumbnails decoded (a headless browser's DOM dump shows it)
LOADED = ("addEventListener('load',()=>{document.body.dataset.imagesLoaded="
          "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length})")


def write_html(path: Path, title: str, rows: list[dict], reports: list[dict]) -> None:
    """The page: `rows` in the summary table (reports, plus cost where known), a section per report."""
    k = reports[0]["k"] if reports else 5
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{LOADED}</script></head><body><h1>{html.escape(title)}</h1>"
            f"{summary_table(rows, k)}" + "".join(model_section(r) for r in reports) + "</body></html>\n")
    atomic_write_text(path, page)
