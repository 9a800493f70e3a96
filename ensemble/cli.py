"""`ens`: a thin click layer. Each command parses, loads config, calls one library function, prints."""

from __future__ import annotations

import logging
import os
import sys

import click

from .errors import EnsError


def _remember_workdir(ctx: click.Context, param, value: str) -> str:
    """Kept for error lines: a failed write inside the workspace suggests another --workdir, one outside it not."""
    if isinstance(ctx.obj, dict):
        ctx.obj["workdir"] = value
    return value


WORKDIR = click.option("--workdir", default=lambda: os.environ.get("ENS_WORKDIR", "runs"), show_default="runs",
                       type=click.Path(file_okay=False), callback=_remember_workdir,
                       help="Workspace folder (env ENS_WORKDIR).")


WORKERS = click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
                       help="Image-decoding processes (0: decode in the main process).")
NPROC = click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Processes, one per GPU (CPU: gloo); same as `torchrun --nproc-per-node N -m ensemble.cli`.")


def relaunch(nproc: int) -> None:
    """Re-run this command under torch.distributed.run with `nproc` processes (unless already inside one)."""
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ensemble.cli", *args]
    sys.exit(subprocess.call(cmd))


class EnsGroup(click.Group):
    """Turns EnsError (and other expected failures) into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (EnsError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            workdir = (ctx.obj or {}).get("workdir")
            click.echo(f"error: {exc if isinstance(exc, EnsError) else describe_os_error(exc, workdir)}", err=True)
            sys.exit(2)


def describe_os_error(exc: OSError, workdir: str | None = None) -> str:
    """One line for a failed read or write: which file, what the system said (read-only, full disk...), and
    what to change: the --workdir when the file is in the workspace, else the place the file is written to."""
    import errno

    where = exc.filename or "a file"
    in_workspace = workdir is not None and _inside(where, workdir)
    fix = "give a writable --workdir" if in_workspace else "write it to another folder"
    room = "give another --workdir" if in_workspace else fix
    hints = {errno.EROFS: ("the workspace is on a read-only file system; " if in_workspace else "") + fix,
             errno.EACCES: f"permission denied; {fix} or fix the folder's permissions",
             errno.ENOSPC: f"no space left on the device; free some or {room}"}
    return f"{where}: {exc.strerror or exc}" + (f" ({hints[exc.errno]})" if exc.errno in hints else "")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


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
@NPROC
@WORKDIR
def train_member_cmd(cfg_path: str, overrides: tuple[str, ...], dry_run: bool, nproc: int, workdir: str) -> None:
    """Train one member (resumes from its last checkpoint when rerun)."""
    from .commands import train_member

    echo(train_member.run(cfg_path, list(overrides), dry_run, workdir, launch=lambda: relaunch(nproc)))


def echo(text: str) -> None:
    """Print a command's text (empty on the non-main ranks of a multi-process run)."""
    if text:
        click.echo(text)


MODEL_ARG = click.argument("model", required=False)

FEATURES = click.option("--features", type=click.Choice(["neck", "backbone"]), default=None,
                        help="Member feature to use (default: the member's eval.features).")


@main.command("embed")
@MODEL_ARG
@click.option("--manifest", required=True, type=click.Path(), help="CSV with a path column.")
@click.option("--out", required=True, type=click.Path(), help="Output .npy (float32, one row per manifest row).")
@click.option("--tta/--no-tta", default=True, show_default=True,
              help="Horizontal-flip averaging (a model's eval.extra_sizes are fixed by its model file).")
@FEATURES
@WORKERS
@NPROC
@WORKDIR
def embed_cmd(model, manifest, out, tta, features, workers, nproc, workdir):
    """Embed a manifest with MODEL (member name, `ensemble[:name]`, `student:<name>`; default: newest ensemble)."""
    from .commands import embed

    relaunch(nproc)
    echo(embed.run(model, workdir, manifest, out, tta, features, workers))


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
    from .commands import fuse

    echo(fuse.run(workdir, config_path, list(overrides), members=members, pca=pca, no_pca=no_pca, name=name,
                  fit_on=fit_on, features=features, whiten=whiten, merge=merge))


@main.command("eval")
@MODEL_ARG
@click.option("--data", type=click.Path(), default=None, help="Data config with query/index.")
@click.option("--query", type=click.Path(), default=None)
@click.option("--index", type=click.Path(), default=None)
@click.option("--k", default=5, show_default=True, type=click.IntRange(min=1), help="Neighbours scored (mP@k).")
@click.option("--out", type=click.Path(), default=None, help="JSON report path (default runs/reports/MODEL.json).")
@FEATURES
@WORKERS
@click.option("--approx-above", default=2_000_000, show_default=True, type=click.IntRange(min=0),
              help="Index size above which an IVF index replaces exact search (its recall vs exact is reported).")
@WORKDIR
def eval_cmd(model, data, query, index, k, out, features, workers, approx_above, workdir):
    """mP@5 (GUIE), recall@1, mAP@100, per domain, for MODEL; writes JSON, Markdown and PNG."""
    from .commands import eval as eval_command

    echo(eval_command.run(model, workdir, data, query, index, k, out, features, workers, approx_above))


@main.command("distill")
@click.option("--cfg", "cfg_path", default="distill/h14_student.yaml", show_default=True, type=click.Path(),
              help="Student recipe YAML.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; load no weights.")
@NPROC
@WORKDIR
def distill_cmd(cfg_path: str, overrides: tuple[str, ...], dry_run: bool, nproc: int, workdir: str) -> None:
    """Train a student on the fused ensemble's embedding (resumes when rerun)."""
    from .commands import distill

    echo(distill.run(cfg_path, list(overrides), dry_run, workdir, launch=lambda: relaunch(nproc)))


@main.command("export")
@MODEL_ARG
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .pt (TorchScript) or .onnx (ONNX).")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default=None,
              help="Export format (default: from the --out suffix).")
@click.option("--sample", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images embedded both ways to verify the file.")
@click.option("--verify-manifest", type=click.Path(), default=None,
              help="CSV of images to verify with (default: the model's query split).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Weights and compute of the members inside the file (fp16: half the size, for GPUs such "
                   "as a T4 where fp32 is 8x slower); input, output and fusion stay as the contract says.")
@WORKDIR
def export_cmd(model, out, fmt, sample, verify_manifest, dtype, workdir):
    """Write MODEL (student:<name>, a member, or the ensemble) as one self-contained TorchScript or ONNX file."""
    from .commands import export

    echo(export.run(model, workdir, out, sample, verify_manifest, fmt, dtype))


@main.command("budget")
@MODEL_ARG
@click.option("--images", default=205_000, show_default=True, help="Images to embed (GUIE: 200k index + 5k query).")
@click.option("--hours", default=9.0, show_default=True, help="Time budget.")
@click.option("--gpu", "gpus", multiple=True, type=click.Choice(["T4", "P100", "A100", "H100"]),
              help="Only these GPUs (repeatable; default all).")
@click.option("--utilization", default=None, type=float, help="Fraction of peak assumed (default 0.5, TARGETS.md).")
@click.option("--measure/--no-measure", default=None, help="Time the model here (default: yes for trained models).")
@click.option("--recipes", default="members", show_default=True, type=click.Path(file_okay=False),
              help="Where an ensemble config's member recipes are.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@WORKDIR
def budget_cmd(model, images, hours, gpus, utilization, measure, recipes, as_json, workdir):
    """FLOPs per image, speed here, and whether MODEL (trained, or a recipe/ensemble config) fits the budget."""
    from .commands import budget

    echo(budget.run(model, workdir, images, hours, gpus, utilization, measure, recipes, as_json))


@main.command("pipeline")
@click.argument("config", type=click.Path())
@WORKDIR
def pipeline_cmd(config: str, workdir: str) -> None:
    """Train members, fuse, distil, export, evaluate all of them; print one table (reruns reuse work)."""
    from .commands import pipeline

    echo(pipeline.run(config, workdir))


@main.group("index")
def index_group() -> None:
    """Searchable galleries: images embedded by a MODEL in a persisted faiss index."""


GALLERY_IMAGES = [click.option("--manifest", type=click.Path(), default=None, help="CSV with a path column."),
                  click.option("--folder", type=click.Path(file_okay=False), default=None,
                               help="Every image below this folder (label: its parent folder's name).")]


def gallery_images(fn):
    for option in reversed(GALLERY_IMAGES):
        fn = option(fn)
    return fn


@index_group.command("build")
@MODEL_ARG
@gallery_images
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Gallery folder to write.")
@click.option("--approx-above", default=1_000_000, show_default=True, type=click.IntRange(min=0),
              help="Images above which the index is IVF-Flat (its recall vs exact is measured) instead of exact.")
@WORKERS
@WORKDIR
def index_build_cmd(model, manifest, folder, out, approx_above, workers, workdir):
    """Embed a gallery with MODEL (any MODEL, exported files included) into a searchable index."""
    from .commands import index

    echo(index.run_build(model, workdir, out, manifest, folder, approx_above, workers))


@index_group.command("add")
@click.argument("index", type=click.Path(file_okay=False))
@gallery_images
@WORKERS
@WORKDIR
def index_add_cmd(index, manifest, folder, workers, workdir):
    """Embed more images with the gallery's own model and append them."""
    from .commands import index as index_command

    echo(index_command.run_add(index, workdir, manifest, folder, workers))


@main.command("search")
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours per query.")
@click.option("--model", default=None, help="Embed the queries with this MODEL (must embed as the gallery's did).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@WORKDIR
def search_cmd(index, images, k, model, as_json, workdir):
    """Print the nearest gallery images of each query IMAGE, with Euclidean distances."""
    from .commands import search

    echo(search.run(index, images, k, model, as_json, workdir))


@main.group("data")
def data_group() -> None:
    """Datasets: fetch public ones and write their manifests."""


@data_group.command("fetch")
@click.argument("name", type=click.Choice(["grocery"]))
@click.option("--to", "dest", default="data/grocery", show_default=True, type=click.Path(file_okay=False),
              help="Where to download and extract.")
@click.option("--shared", default="../shared/data/grocery", show_default=True, type=click.Path(),
              help="An existing copy to use instead of downloading.")
@click.option("--config", "data_config", default="configs/data/grocery.yaml", show_default=True, type=click.Path(),
              help="Data config pointed at the downloaded manifests.")
def data_fetch_cmd(name: str, dest: str, shared: str, data_config: str) -> None:
    """Get NAME (grocery: GroceryStoreDataset, MIT) and its open-set train/query/index manifests."""
    from .commands import data

    echo(data.run_fetch(name, dest, shared, data_config))


@data_group.command("build")
@click.argument("config", type=click.Path())
def data_build_cmd(config: str) -> None:
    """Merge dataset layouts (manifest, image folder, GLDv2, Products-10K) into one balanced manifest."""
    from .commands import data

    echo(data.run_build(config))


@data_group.command("shards")
@click.argument("manifest", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the shards.")
@click.option("--shard-size", default=1000, show_default=True, help="Images per tar shard.")
def data_shards_cmd(manifest: str, out: str, shard_size: int) -> None:
    """Pack MANIFEST's images into WebDataset tar shards plus a manifest that reads them by offset."""
    from .commands import data

    echo(data.run_shards(manifest, out, shard_size))


@main.command("show")
@click.argument("model")
@WORKDIR
def show_cmd(model: str, workdir: str) -> None:
    """Print a trained member's, `student:<name>`'s or an exported file's self-description."""
    from .commands import show

    echo(show.run(model, workdir))


if __name__ == "__main__":
    main()
