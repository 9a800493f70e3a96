"""Scoring a MODEL of a workspace on query vs index: embed (cached), score, write the reports."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_json
from ..config.load import load_data_cfg
from ..data.manifest import read_eval_pair
from ..errors import EnsError
from ..workspace.layout import Workspace
from ..workspace.resolve import ResolvedModel, resolve_model
from .html import examples, write_html
from .metrics import evaluate_with_neighbors
from .provenance import eval_overlap, fit_sets
from .report import write_markdown, write_png

APPROX_ABOVE = 2_000_000  # index rows above which eval searches an IVF index (exact 2M x 5k: ~27 s here)


def eval_manifests(data: str | None, query: str | None, index: str | None, default_data: str | None):
    """(query, index) manifests from --query/--index or a data config."""
    if query or index:
        if not (query and index):
            raise EnsError("--query and --index must be given together")
        if data:  # which pair would be scored is not obvious: refuse rather than pick one
            raise EnsError(f"--data {data} and --query/--index: give one (a data config, or the two manifests)")
        return read_eval_pair(query, index)
    path = data or default_data
    if path is None:
        raise EnsError("no data: give --data CONFIG or --query CSV --index CSV")
    cfg = load_data_cfg(path)
    if cfg.query is None or cfg.index is None:
        raise EnsError(f"{path}: keys 'query' and 'index' are needed to evaluate")
    return read_eval_pair(cfg.query, cfg.index)


def evaluate(spec: str | ResolvedModel | None, workdir: str | Path | Workspace, data: str | None = None,
             query: str | None = None, index: str | None = None, k: int = 5, out: str | Path | None = None,
             features: str | None = None, workers: int = 2, approx_above: int | None = APPROX_ABOVE) -> dict:
    """Score MODEL (a name, or an already resolved model) on query vs index; write JSON, Markdown and
    a PNG of example queries."""
    if k < 1:
        raise EnsError(f"--k {k}: expected a positive number of neighbours")
    if out is not None and (Path(out).suffix != ".json" or Path(out).is_dir()):  # before embedding, not after
        raise EnsError(f"--out {out}: expected a .json file name (the .md, .png and .html reports go beside it)")
    ws = Workspace.at(workdir)
    model = spec if isinstance(spec, ResolvedModel) else resolve_model(spec, ws, features)
    q_manifest, i_manifest = eval_manifests(data, query, index, model.data)
    q = model.embed(q_manifest, ws, workers=workers)
    x = model.embed(i_manifest, ws, workers=workers)
    report, searched = evaluate_with_neighbors(q, q_manifest.labels, x, i_manifest.labels, k, q_manifest.domains,
                                               approx_above=approx_above)
    report.update(model=model.name, kind=model.kind, dim=int(q.shape[1]), query=str(q_manifest.source),
                  index=str(i_manifest.source), k=k, tta=model.tta.describe())
    if overlap := eval_overlap(fit_sets(model, ws), q_manifest, i_manifest):
        report["transductive"] = overlap  # fitted partly on the images it is scored on: the table says so
    neighbors = searched[:, :k]  # the neighbours just scored: the report's pictures show what was scored
    report["examples"] = examples(q_manifest, i_manifest, q, x, neighbors, k)
    out = Path(out) if out else ws.reports_dir / f"{model.name.replace(':', '_')}.json"
    atomic_write_json(out, report)
    write_markdown(out.with_suffix(".md"), [report], k)
    write_png(out.with_suffix(".png"), q_manifest, i_manifest, neighbors, title=model.name)
    write_html(out.with_suffix(".html"), f"ens eval {model.name}", [report], [report])
    report["files"] = [str(out.with_suffix(s)) for s in (".json", ".md", ".png", ".html")]
    return report
