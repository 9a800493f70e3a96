"""Reliability: run the fault tests by category and count what was tried and what survived.

    .venv/bin/python bench/reliability.py

Each category is a set of pytest tests (bad images, bad configs, inconsistent artifacts, SIGKILLs,
numerical faults); each test case injects one fault or one bad input and asserts the exact outcome
(pixels, the one-line message, equal weights after resume). "Data lost" counts failing cases: a
passing interruption case means the rerun resumed and ended equal to an uninterrupted run.
Writes bench/results/reliability.json and the "Reliability" table of BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

CATEGORIES = {
    "bad images (truncated, empty, text, missing, 1x1, 20000x20000 header, 16-bit, CMYK, palette+alpha, EXIF)": [
        "tests/data/test_decode.py", "tests/data/test_dataset.py",
        "tests/test_export.py::test_export_contract_in_a_fresh_process"],
    "bad configs and arguments (unknown key, wrong type, negative epochs, missing files/columns, bad --set, ...)": [
        "tests/config/test_load.py", "tests/test_cli.py::test_bad_input_is_one_line_exit_2",
        "tests/test_student.py::test_student_recipe_errors_are_one_line",
        "tests/test_student.py::test_arcface_term_needs_labels", "tests/test_pipeline.py::test_pipeline_config_errors",
        "tests/evaluate/test_run.py::test_eval_errors_are_one_line", "tests/test_budget.py::test_budget_cli_errors_and_gpu_filter",
        "tests/test_export.py::test_export_errors", "tests/data/test_fetch.py::test_fetch_errors",
        "tests/data/test_manifest.py::test_missing_columns_is_one_line_error"],
    "inconsistent artifacts (other manifest, stale cache, wrong dims, other recipe, changed member, bad export)": [
        "tests/fuse/test_ensemble.py::test_refusals",
        "tests/fuse/test_ensemble.py::test_members_from_different_training_sets_are_refused",
        "tests/fuse/test_ensemble.py::test_changed_member_invalidates_the_ensemble",
        "tests/fuse/test_ensemble.py::test_reducer_not_matching_its_yaml_is_refused",
        "tests/fuse/test_reducer.py::test_transform_normalises_whitens_and_refuses_wrong_dims",
        "tests/train/test_checkpoint.py", "tests/test_student.py::test_student_refuses_a_width_other_than_the_teachers",
        "tests/test_export.py::test_export_refuses_when_the_file_disagrees_with_the_package",
        "tests/embed/test_extract.py::test_second_embedding_is_a_cache_hit_and_new_checkpoint_misses"],
    "SIGKILL of a real `ens` process (train-member, embed, fuse, distill), then rerun": ["tests/faults/test_interrupt.py"],
    "numerical faults (NaN/inf loss: stop naming the step, or skip)": [
        "tests/test_member.py::test_nonfinite_loss_stops_naming_the_step_or_skips"],
}


def run_category(selectors: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-m", "", f"--junitxml={report}",
                        *selectors], cwd=ROOT, capture_output=True, text=True)
        cases = ET.parse(report).getroot().iter("testcase")
        outcome = {"cases": 0, "passed": 0, "failed": [], "skipped": 0}
        for case in cases:
            outcome["cases"] += 1
            if case.find("skipped") is not None:
                outcome["skipped"] += 1
            elif case.find("failure") is not None or case.find("error") is not None:
                outcome["failed"].append(f"{case.get('classname')}::{case.get('name')}")
            else:
                outcome["passed"] += 1
    return outcome


def main() -> None:
    from update_benchmarks import machine, record

    results = {name: run_category(selectors) for name, selectors in CATEGORIES.items()}
    meta = {"command": "python bench/reliability.py", "date": str(date.today()),
            "machine": machine()}
    lines = [f"Command: `{meta['command']}` — {meta['date']}, {meta['machine']}, one run. Each test case injects "
             "one fault or bad input and asserts the outcome (pixels, the one-line message, equal weights after "
             "resume); data lost = cases that failed.", "",
             "| category | test cases | passed | skipped | data lost |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cases']} | {r['passed']} | {r['skipped']} | {len(r['failed'])} |")
    total = {k: sum(r[k] for r in results.values()) for k in ("cases", "passed", "skipped")}
    lost = sum(len(r["failed"]) for r in results.values())
    lines.append(f"| **total** | {total['cases']} | {total['passed']} | {total['skipped']} | {lost} |")
    body = "\n".join(lines)
    record("reliability", {**meta, "results": results}, "Reliability", body)
    print(body)


if __name__ == "__main__":
    main()
