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
    return "\n".join(lines)


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
