"""SIGKILL a real `ens` process mid-run, rerun the same command: it resumes and ends where an
uninterrupted run ends; nothing half-written is ever read as complete."""

import os
import signal
import subprocess
import sys
import time

import torch

from ensemble.checkpoint import load_checkpoint
from tests.conftest import tiny_recipe

# a subprocess does not see the tiny open_clip config registered in this process: use timm's test_vit
TIMM = ["--set", "backbone.source=timm", "--set", "backbone.arch=test_vit"]
EPOCHS = [*TIMM, "--set", "stages=[{train: [neck, head], epochs: 2}, {train: [all], epochs: 6}]",
          "--set", "eval.enabled=false"]


def ens(*args) -> list[str]:
    return [sys.executable, "-m", "ensemble.cli", *map(str, args)]


def kill_when(cmd: list[str], ready, timeout_s: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_member_training_resumes_to_the_same_weights(tmp_path, coil_data):
    recipe = tiny_recipe(tmp_path, coil_data)
    subprocess.run(ens("train-member", "--cfg", recipe, "--workdir", tmp_path / "a", *EPOCHS), check=True,
                   capture_output=True)
    last = tmp_path / "b" / "members" / "tiny" / "last.pt"
    kill_when(ens("train-member", "--cfg", recipe, "--workdir", tmp_path / "b", *EPOCHS), last.exists)
    killed_at = load_checkpoint(last)  # whatever was on disk at the kill is a complete checkpoint
    assert (killed_at["stage"], killed_at["epoch"]) < (1, 6)
    assert not (tmp_path / "b" / "members" / "tiny" / "best.pt").exists()
    rerun = subprocess.run(ens("-v", "train-member", "--cfg", recipe, "--workdir", tmp_path / "b", *EPOCHS),
                           capture_output=True, text=True, check=True)
    assert "resuming tiny from stage" in rerun.stderr
    a = load_checkpoint(tmp_path / "a" / "members" / "tiny" / "best.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "members" / "tiny" / "best.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    lines = (tmp_path / "b" / "members" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8  # every epoch exactly once


def test_sigkill_during_embedding_leaves_no_complete_looking_cache(tmp_path, trained_workspace):
    import shutil

    import numpy as np

    runs = tmp_path / "runs"
    shutil.copytree(trained_workspace / "members", runs / "members")
    rows = (trained_workspace.parent / "index.csv").read_text().splitlines()
    manifest = tmp_path / "big.csv"
    manifest.write_text("\n".join([rows[0]] + rows[1:] * 30) + "\n")  # 600 rows: a few seconds of work
    cmd = ens("embed", "tvit", "--manifest", manifest, "--out", tmp_path / "x.npy", "--workdir", runs,
              "--workers", 0)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    seen = ""
    while "embed big.csv" not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)  # tqdm's bar appears once extraction has started
    proc.kill()
    proc.wait()
    assert not list((runs / "cache").glob("*/*.npy"))  # an interrupted extraction stores nothing
    assert not (tmp_path / "x.npy").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    assert np.load(tmp_path / "x.npy").shape == (600, 8)
    assert [np.load(p).shape for p in (runs / "cache").glob("*/*.npy")] == [(600, 8)]


def test_sigkill_during_distillation_resumes_to_the_same_student(tmp_path, distilled_workspace):
    """The killed run reuses cached teacher targets (the members never run) and resumes its epochs."""
    import shutil

    from tests.conftest import STUDENT_SETS

    runs, ref = tmp_path / "runs", tmp_path / "ref"
    for workspace in (runs, ref):
        for folder in ("members", "ensemble"):
            shutil.copytree(distilled_workspace / folder, workspace / folder)
    recipe = tiny_recipe(tmp_path, distilled_workspace.parent / "data.yaml", name="ks")
    sets = [s for s in STUDENT_SETS if not s.startswith("stages")] + [
        "backbone.source=timm", "backbone.arch=test_vit", "stages=[{train: [neck], epochs: 2}, {train: [all], epochs: 6}]"]
    args = ["distill", "--cfg", recipe, "--workdir", runs, *[x for s in sets for x in ("--set", s)]]
    from ensemble.config.load import load_student_cfg
    from ensemble.train.student import distill
    from ensemble.workspace import Workspace

    distill(load_student_cfg(recipe, sets), ref)  # uninterrupted reference (computes the targets)
    kill_dir = Workspace(runs).student_dir("ks")
    kill_dir.mkdir(parents=True)
    for name in ("targets.npy", "targets.json"):
        shutil.copy(Workspace(ref).student_dir("ks") / name, kill_dir / name)
    kill_when(ens(*args), (kill_dir / "last.pt").exists)
    killed_at = load_checkpoint(kill_dir / "last.pt", kind="student")
    assert (killed_at["stage"], killed_at["epoch"]) < (1, 6) and not (kill_dir / "best.pt").exists()
    rerun = subprocess.run(ens("-v", *args), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    assert "resuming ks from stage" in rerun.stderr
    a = load_checkpoint(Workspace(ref).student_dir("ks") / "best.pt")["model"]
    b = load_checkpoint(kill_dir / "best.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sigkill_during_fusion_leaves_no_ensemble_and_the_rerun_matches(tmp_path, trained_workspace):
    import shutil

    import numpy as np
    import yaml

    rows = (trained_workspace.parent / "index.csv").read_text().splitlines()
    manifest = tmp_path / "fit.csv"
    manifest.write_text("\n".join([rows[0]] + rows[1:] * 30) + "\n")
    outputs = {}
    for name in ("ref", "killed"):
        runs = tmp_path / name
        shutil.copytree(trained_workspace / "members" / "tvit", runs / "members" / "tvit")
        cmd = ens("fuse", "--members", "tvit", "--pca", 4, "--fit-on", manifest, "--name", "k", "--workdir", runs)
        if name == "killed":
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
            seen = ""
            while "embed fit.csv" not in seen and proc.poll() is None:
                seen += proc.stderr.read(1)
            proc.kill()
            proc.wait()
            assert not (runs / "ensemble" / "k" / "ensemble.yaml").exists()
            assert not (runs / "ensemble" / "k" / "reducer.npz").exists()
        subprocess.run(cmd, check=True, capture_output=True)
        folder = runs / "ensemble" / "k"
        outputs[name] = (yaml.safe_load((folder / "ensemble.yaml").read_text()), np.load(folder / "reducer.npz"))
    (ref_yaml, ref_npz), (yaml_b, npz_b) = outputs["ref"], outputs["killed"]
    assert ref_yaml["reducer"] == yaml_b["reducer"] and ref_yaml["fit_on"]["rows"] == 600
    assert np.allclose(ref_npz["components"], npz_b["components"], atol=1e-4)
