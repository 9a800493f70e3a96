"""`ens`: a thin click layer. Each command parses, loads config, calls one library function, prints."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from .errors import EnsError

WORKDIR = click.option("--workdir", default=lambda: os.environ.get("ENS_WORKDIR", "runs"), show_default="runs",
                       type=click.Path(file_okay=False), help="Workspace folder (env ENS_WORKDIR).")


class EnsGroup(click.Group):
    """Turns EnsError (and other expected failures) into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EnsError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=EnsGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.pass_context
def main(ctx, debug: bool, verbose: bool) -> None:
    """Train image-embedding members, fuse them, distil the ensemble, measure it."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("ensemble").setLevel(logging.INFO if verbose else logging.WARNING)


@main.command("train-member")
@click.option("--cfg", "cfg_path", required=True, type=click.Path(), help="Member recipe YAML.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; load no weights.")
@WORKDIR
def train_member_cmd(cfg_path: str, overrides: tuple[str, ...], dry_run: bool, workdir: str) -> None:
    """Train one member (resumes from its last checkpoint when rerun)."""
    from .config.load import load_member_cfg
    from .member import format_plan, plan, train_member

    cfg = load_member_cfg(cfg_path, list(overrides))
    if dry_run:
        click.echo(format_plan(plan(cfg)))
        return
    result = train_member(cfg, workdir)
    click.echo(format_member_result(result))


def format_member_result(result: dict) -> str:
    """One table: untrained backbone vs the trained member's neck and backbone features."""
    if "trained" not in result:
        return f"member {result['name']}: trained (eval disabled)"
    rows = [("untrained backbone", result["untrained_backbone"]),
            ("trained, neck", result["trained"]["neck"]), ("trained, backbone", result["trained"]["backbone"])]
    domains = sorted(result["trained"]["neck"].get("per_domain", {}))
    lines = [f"member {result['name']} (query vs index, flip TTA: {result['flip_tta']}, "
             f"{result['eval_image_size']} px)",
             "| features | mP@5 | recall@1 | " + " | ".join(domains) + " |",
             "|---|---|---|" + "---|" * len(domains)]
    for name, r in rows:
        per = " | ".join(f"{r['per_domain'][d]:.3f}" for d in domains)
        lines.append(f"| {name} | {r['mP@5']:.3f} | {r['recall@1']:.3f} | {per} |")
    lines.append(f"unreadable training images skipped: {result.get('train_images_unreadable', 0)}")
    return "\n".join(lines)


MODEL_ARG = click.argument("model", required=False)
FEATURES = click.option("--features", type=click.Choice(["neck", "backbone"]), default=None,
                        help="Member feature to use (default: the member's eval.features).")


@main.command("embed")
@MODEL_ARG
@click.option("--manifest", required=True, type=click.Path(), help="CSV with a path column.")
@click.option("--out", required=True, type=click.Path(), help="Output .npy (float32, one row per manifest row).")
@click.option("--tta/--no-tta", default=True, show_default=True, help="Horizontal-flip averaging.")
@FEATURES
@click.option("--workers", default=2, show_default=True)
@WORKDIR
def embed_cmd(model, manifest, out, tta, features, workers, workdir):
    """Embed a manifest with MODEL (member name, `ensemble[:name]`; default: newest ensemble)."""
    from .evaluate.run import embed_to_file

    meta = embed_to_file(model, workdir, manifest, out, tta, features, workers)
    click.echo(f"wrote {out}: {meta['rows']} x {meta['dim']} ({meta['model']}, tta {meta['tta']})")


@main.command("fuse")
@click.option("--pca", type=int, default=None, help="Reduce to this many dims (default: the config's, 64).")
@click.option("--no-pca", is_flag=True, help="Plain concatenation, no reducer.")
@click.option("--members", default=None, help="Comma-separated member names (default: all trained members).")
@click.option("--config", "config_path", type=click.Path(), default=None, help="Ensemble config YAML.")
@click.option("--name", default=None, help="Ensemble name (default: the config's name, else 'default').")
@click.option("--fit-on", default=None, help="train | query | index | a manifest CSV.")
@FEATURES
@click.option("--whiten/--no-whiten", default=None, help="Whiten the PCA output.")
@click.option("--merge", type=click.Choice(["mean", "concat"]), default=None,
              help="Average members of one architecture (mean) or keep all (concat).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override an ensemble config key.")
@WORKDIR
def fuse_cmd(pca, no_pca, members, config_path, name, fit_on, features, whiten, merge, overrides, workdir):
    """Fuse trained members into one embedding: merge per architecture, concatenate, PCA."""
    from .fuse.ensemble import fuse
    from .fuse.config import ensemble_cfg

    cfg = ensemble_cfg(workdir, config_path, list(overrides), members=members, pca=pca, no_pca=no_pca,
                       name=name, fit_on=fit_on, features=features, whiten=whiten, merge=merge)
    ens = fuse(cfg, workdir)
    d = ens.description
    reducer = d["reducer"]
    facts = (f"PCA {d['concat_dim']} -> {reducer['dims']} (explained variance {reducer['explained_variance_ratio']:.3f})"
             if reducer else f"concatenation, {d['concat_dim']}-d")
    click.echo(f"ensemble {ens.name}: {len(d['members'])} members in {len(d['groups'])} groups, {d['features']} "
               f"features, {facts}, fitted on {d['fit_on']['rows']} images")


@main.command("eval")
@MODEL_ARG
@click.option("--data", type=click.Path(), default=None, help="Data config with query/index.")
@click.option("--query", type=click.Path(), default=None)
@click.option("--index", type=click.Path(), default=None)
@click.option("--k", default=5, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="JSON report path (default runs/reports/MODEL.json).")
@FEATURES
@click.option("--workers", default=2, show_default=True)
@WORKDIR
def eval_cmd(model, data, query, index, k, out, features, workers, workdir):
    """mP@5 (GUIE), recall@1, mAP@100, per domain, for MODEL; writes JSON, Markdown and PNG."""
    from .evaluate.report import markdown_table
    from .evaluate.run import evaluate

    report = evaluate(model, workdir, data, query, index, k, out, features, workers)
    click.echo(markdown_table([report], k).rstrip())
    click.echo("wrote " + ", ".join(report["files"]))


@main.command("show")
@click.argument("member")
@WORKDIR
def show_cmd(member: str, workdir: str) -> None:
    """Print a trained member's self-description (architecture, image size, mean/std, dims)."""
    from .member import MODEL_FILE, member_dir
    from .train.checkpoint import load_checkpoint

    payload = load_checkpoint(member_dir(workdir, member) / MODEL_FILE, kind="member_model")
    click.echo(json.dumps(payload["describe"], indent=2))


if __name__ == "__main__":
    main()
