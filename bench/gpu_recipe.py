"""The real recipes' code path on a GPU: ViT-H-14 (random weights), bf16, through the `ens` CLI.

On a GPU machine, from the repository root (the package's dependencies installed; the data is the
MIT grocery sample shipped in sample/, so nothing else has to travel):
    python bench/gpu_recipe.py --out gpu_recipe.json [--workdir /tmp/ens_gpu] [--deadline-s 420]
    (--only 'train-member h14_224,export h14_224' --member h14_224 reruns some steps;
     --fuse h14_224 makes the student's teacher from that member alone)
Here, to store a result and update BENCHMARKS.md:
    python bench/gpu_recipe.py --record gpu_recipe.json

Each step is one `ens` command as a user types it, with the shipped recipe and only these keys
overridden: the data (the grocery sample), backbone.pretrained (null: no ViT weights offline),
optim.max_steps_per_epoch and the loader's workers. Steps: train members/h14_224.yaml (six
alternating stages), members/h14_280.yaml (init_from h14_224, positional embedding resampled),
members/l14_336_s0.yaml (ViT-L-14-336-quickgelu, sub-centre ArcFace with adaptive margins),
export h14_280 as TorchScript and score that file, fuse both members (flip TTA, merged per
architecture, PCA-64 fitted on the train images), distill distill/h14_student.yaml from that
ensemble, export and score the student, then try the student as ONNX (expected: the clear refusal
above protobuf's 2 GB), then export it in fp16 (`--dtype fp16`, the T4 deployment) and score that
file. Records per step the wall time, exit code and last output lines, and from the run folders
the per-epoch img/s, autocast dtype, peak GPU memory and checkpoint sizes. With random weights on
24 queries, the mP@5 values are smoke numbers, not quality claims.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ensemble.atomic import atomic_write_json  # noqa: E402

DATA = ROOT / "configs" / "data" / "sample.yaml"


def member_sets(steps: int, workers: int) -> list[str]:
    sets = [f"data={DATA}", "backbone.pretrained=null", f"optim.max_steps_per_epoch={steps}",
            f"loader.workers={workers}"]
    return [arg for s in sets for arg in ("--set", s)]


FUSED = ("h14_224", "h14_280")


def plan(work: Path, steps: int, workers: int, member: str = "h14_280",
         fused: tuple[str, ...] = FUSED) -> list[tuple[str, list[str]]]:
    """(step name, `ens` arguments) in the order a user runs them; `member` is the one exported and scored,
    `fused` the members the student's teacher ensemble fuses."""
    sets = member_sets(steps, workers)
    return [
        ("train-member h14_224", ["train-member", "--cfg", "members/h14_224.yaml", *sets]),
        ("train-member h14_280", ["train-member", "--cfg", "members/h14_280.yaml", *sets]),
        ("train-member l14_336_s0", ["train-member", "--cfg", "members/l14_336_s0.yaml", *sets]),
        (f"export {member} (TorchScript)", ["export", member, "--out", str(work / f"{member}.pt")]),
        (f"eval {member}.pt", ["eval", str(work / f"{member}.pt"), "--data", str(DATA), "--workers", str(workers)]),
        (f"fuse {' + '.join(fused)}, PCA-64", ["fuse", "--config", "configs/ensemble/guie.yaml", "--members",
                                               ",".join(fused), "--name", "guie_fused", "--fit-on", "train",
                                               "--set", f"workers={workers}"]),
        ("distill h14_student", ["distill", "--cfg", "distill/h14_student.yaml", *sets, "--set", "teacher=guie_fused"]),
        ("export h14_student (TorchScript)", ["export", "student:h14_student", "--out", str(work / "h14_student.pt")]),
        ("eval h14_student.pt", ["eval", str(work / "h14_student.pt"), "--data", str(DATA),
                                 "--workers", str(workers)]),
        ("export h14_student (ONNX)", ["export", "student:h14_student", "--out", str(work / "h14_student.onnx")]),
        ("export h14_student (TorchScript, fp16)", ["export", "student:h14_student", "--dtype", "fp16", "--out",
                                                    str(work / "h14_student_fp16.pt")]),
        ("eval h14_student_fp16.pt", ["eval", str(work / "h14_student_fp16.pt"), "--data", str(DATA),
                                      "--workers", str(workers)]),
    ]


def last_lines(text: str, n: int = 12) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip()]  # splitlines also splits tqdm's \r
    return [line[:300] for line in lines[-n:]]


def run_step(name: str, args: list[str], work: Path, left_s: float) -> dict:
    env = {**os.environ, "ENS_WORKDIR": str(work / "runs"), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "ensemble.cli", *args], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=max(left_s, 1))
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", _text(exc.stdout), _text(exc.stderr)
    seconds = time.perf_counter() - started
    (work / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".log")).write_text(stdout + stderr)
    print(f"[{seconds:7.1f} s] rc={rc} {name}", flush=True)
    return {"step": name, "command": "ens " + " ".join(args), "rc": rc, "seconds": round(seconds, 1),
            "stdout": last_lines(stdout), "stderr": last_lines(stderr), "error": error_line(stderr)}


def error_line(text: str) -> str:
    """The last line that names an error (a traceback's message sits above its last 12 lines)."""
    lines = text.splitlines()
    errors = [(i, x) for i, x in enumerate(lines) if re.search(r"Error\b|error:", x) and "Warning" not in x]
    if not errors:
        return ""
    i, line = errors[-1]
    if line.rstrip().endswith(":") and i + 1 < len(lines):  # torch puts its message on the next line
        line = line.strip() + " " + lines[i + 1].strip()
    return line[:300]


def _text(raw) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw or ""


def run_facts(run_dir: Path) -> dict:
    """Per-epoch throughput and memory, checkpoint sizes and the eval mP@5 of one run folder."""
    facts: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        facts["epochs"] = [{k: r.get(k) for k in ("stage", "train", "steps", "images", "img_per_s", "seconds",
                                                   "loss", "autocast", "peak_mem_gb")}
                           for r in map(json.loads, metrics.read_text().splitlines())]
    facts["files_gb"] = {p.name: round(p.stat().st_size / 1e9, 2) for p in sorted(run_dir.glob("*.pt"))}
    evaluation = run_dir / "eval.json"
    if evaluation.is_file():
        trained = json.loads(evaluation.read_text()).get("trained", {})
        facts["mP@5"] = {k: v.get("mP@5") for k, v in trained.items() if isinstance(v, dict)}
    return facts


def measure(work: Path, steps: int, workers: int, deadline_s: float, out: Path, member: str = "h14_280",
            only: list[str] | None = None, fused: tuple[str, ...] = FUSED) -> dict:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"date": str(date.today()), "device": device, "torch": torch.__version__,
              "steps_per_epoch": steps, "workers": workers, "deadline_s": deadline_s, "member": member,
              "only": only, "fused": list(fused), "steps": []}
    started = time.perf_counter()
    for name, args in plan(work, steps, workers, member, fused):
        if only and not any(name.startswith(prefix) for prefix in only):
            continue
        left = deadline_s - (time.perf_counter() - started)
        if left < 20:
            result["steps"].append({"step": name, "rc": "skipped (deadline)", "seconds": 0})
            continue
        result["steps"].append(run_step(name, args, work, left))
        runs = work / "runs"
        result["runs"] = {d.name: run_facts(d) for kind in ("members", "students")
                          for d in sorted((runs / kind).glob("*")) if d.is_dir()}
        result["exports_gb"] = {p.name: round(p.stat().st_size / 1e9, 2) for p in sorted(work.glob("*.pt"))}
        atomic_write_json(out, result, indent=1)  # after every step: a killed run keeps what it measured
    return result


def shown_line(step: dict) -> str:
    """The output line that says how a step ended: stdout's last when it exited 0 (or wrote a result
    before its time ran out), else stderr's last error line, else stderr's last line."""
    stdout = [x for x in step.get("stdout") or [] if not x.startswith("unreadable")]
    if stdout and step["rc"] in (0, "timeout"):
        return stdout[-1]
    if step.get("error"):
        return step["error"]
    stderr = step.get("stderr") or []
    return (stderr or [""])[-1]


def table(r: dict) -> str:
    options = f" --member {r['member']}" if r.get("member", "h14_280") != "h14_280" else ""
    options += f" --only '{','.join(r['only'])}'" if r.get("only") else ""
    options += f" --fuse {','.join(r['fused'])}" if tuple(r.get("fused", FUSED)) != FUSED else ""
    lines = [f"Command: `python bench/gpu_recipe.py --out gpu_recipe.json{options}` on {r['device']} "
             f"(torch {r['torch']}), "
             f"{r['date']}, one run; shipped recipes, random ViT weights (pretrained: null), grocery sample, "
             f"optim.max_steps_per_epoch={r['steps_per_epoch']}, {r['workers']} loader workers.", "",
             "| step | exit | wall s | output (last line; stderr's where it failed) |", "|---|---|---|---|"]
    for s in r["steps"]:
        tail = shown_line(s).replace("|", "/")[:140]
        lines.append(f"| {s['step']} | {s['rc']} | {s['seconds']} | {tail} |")
    lines += ["", "| run | stage | trains | steps | img/s | autocast | peak GPU mem GB | files GB |",
              "|---|---|---|---|---|---|---|---|"]
    for name, facts in r.get("runs", {}).items():
        files = ", ".join(f"{k} {v}" for k, v in facts.get("files_gb", {}).items())
        for e in facts.get("epochs", []):
            lines.append(f"| {name} | {e['stage'] + 1} | {'+'.join(e['train'])} | {e['steps']} | "
                         f"{e['img_per_s']:.1f} | {e['autocast']} | {e.get('peak_mem_gb') or ''} | {files} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="measure here (needs a GPU) and write this JSON")
    parser.add_argument("--workdir", default="/tmp/ens_gpu_recipe", help="scratch folder for runs and exports")
    parser.add_argument("--steps", type=int, default=2, help="optim.max_steps_per_epoch")
    parser.add_argument("--workers", type=int, default=8, help="loader workers")
    parser.add_argument("--deadline-s", type=float, default=420, help="skip the steps that would start after this")
    parser.add_argument("--member", default="h14_280", help="the member exported and scored as a file")
    parser.add_argument("--only", help="comma-separated step-name prefixes to run (default: all)")
    parser.add_argument("--fuse", default=",".join(FUSED), help="the members fused into the student's teacher")
    parser.add_argument("--record", help="a JSON written by --out: store it and update BENCHMARKS.md")
    parser.add_argument("--record-as", help="store a rerun as bench/results/gpu_recipe_<this>.json and its own "
                                            "section (default: 'partial' for a run with --only)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if args.out:
        only = [x.strip() for x in args.only.split(",")] if args.only else None
        result = measure(Path(args.workdir), args.steps, args.workers, args.deadline_s, Path(args.out),
                         args.member, only, tuple(args.fuse.split(",")))
        print(table(result))
    if args.record:
        from update_benchmarks import record

        result = json.loads(Path(args.record).read_text())
        name, title = "gpu_recipe", "GPU: the real recipes' code path (ViT-H-14, bf16)"
        if result.get("only") or args.record_as:  # a rerun of some steps keeps the full run's table beside it
            name = f"gpu_recipe_{args.record_as or 'partial'}"
            title = f"GPU: the real recipes' code path (bf16), {args.record_as} steps" if args.record_as \
                else title + ", steps rerun"
        record(name, result, title, table(result))
        print(table(result))


if __name__ == "__main__":
    main()
