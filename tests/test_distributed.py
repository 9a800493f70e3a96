"""Two gloo processes on the CPU give the single-process results (torchrun via `--nproc 2`)."""

import subprocess
import sys

import numpy as np
import torch

from ensemble.checkpoint import load_checkpoint
from ensemble.distributed import ShardedSampler, World
from tests.conftest import tiny_recipe

TIMM = ["backbone.source=timm", "backbone.arch=test_vit", "eval.enabled=false",
        "augment.ops={hflip: null, color: null, shift_scale_rotate: null, coarse_dropout: null}",
        "stages=[{train: [neck, head], epochs: 1}, {train: [all], epochs: 2}]"]


def ens(*args) -> list[str]:
    return [sys.executable, "-m", "ensemble.cli", *map(str, args)]


def sets(items):
    return [x for s in items for x in ("--set", s)]


def test_sharded_sampler_splits_each_batch_between_ranks():
    order = list(range(10))
    shards = [list(ShardedSampler(order, World(r, 2))) for r in range(2)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    # per-rank batches of 2 together are the single-process batches of 4
    assert sorted(shards[0][:2] + shards[1][:2]) == order[:4]
    odd = [list(ShardedSampler(list(range(5)), World(r, 2))) for r in range(2)]
    assert odd == [[0, 2, 4], [1, 3, 0]] and len(ShardedSampler(list(range(5)), World(0, 2))) == 3


def test_two_process_training_equals_one_process(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data)
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        done = subprocess.run(ens("train-member", "--cfg", recipe, "--workdir", tmp_path / name, *sets(TIMM), *extra),
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    a = load_checkpoint(tmp_path / "one" / "members" / "tiny" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "members" / "tiny" / "best.pt")["model"]
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            # the key bias has an exactly-zero gradient (softmax is shift invariant), so Adam turns
            # float noise into lr-sized steps that differ with the summation order; compare q and v
            n = x.numel() // 3
            x, y = torch.cat([x[:n], x[2 * n:]]), torch.cat([y[:n], y[2 * n:]])
        # 1e-4: a tenth of one backbone Adam step (lr 1e-3), so a wrong split of the batches fails;
        # the summation order alone moved the last block's value weights by 1.5e-5 on one CPU
        assert torch.allclose(x, y, atol=1e-4), k
    lines = (tmp_path / "two" / "members" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 alone writes the log


def test_two_process_embedding_equals_one_process(tmp_path, trained_workspace):
    manifest = trained_workspace.parent / "index.csv"
    out = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        target = tmp_path / f"{name}.npy"
        done = subprocess.run(ens("embed", "tvit", "--manifest", manifest, "--out", target, "--workers", 0,
                                  "--workdir", trained_workspace, *extra), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = np.load(target)
    assert out["one"].shape == (20, 8) and np.allclose(out["one"], out["two"], atol=1e-6)


def test_two_process_distillation_runs_and_rank_zero_writes_the_student(tmp_path, distilled_workspace):
    import shutil

    from tests.conftest import STUDENT_SETS

    runs = tmp_path / "runs"
    for folder in ("members", "ensemble"):
        shutil.copytree(distilled_workspace / folder, runs / folder)
    # teacher targets from the tiny open_clip members are computed here (subprocesses cannot build them)
    (runs / "students" / "dd").mkdir(parents=True)
    for name in ("targets.npy", "targets.json"):
        shutil.copy(distilled_workspace / "students" / "stu" / name, runs / "students" / "dd" / name)
    recipe = tiny_recipe(tmp_path, distilled_workspace.parent / "data.yaml", name="dd")
    items = [s for s in STUDENT_SETS if not s.startswith("stages")] + [
        "backbone.source=timm", "backbone.arch=test_vit", "stages=[{train: [all], epochs: 2}]"]
    done = subprocess.run(ens("distill", "--cfg", recipe, "--workdir", runs, "--nproc", 2, *sets(items)),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = load_checkpoint(runs / "students" / "dd" / "best.pt", kind="student_model")
    assert payload["describe"]["embedding_dim"] == 8
    assert len((runs / "students" / "dd" / "metrics.jsonl").read_text().splitlines()) == 2
