"""The HTML report: worst queries first, self-contained, and rendered by a real browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from ensemble.data.manifest import read_manifest
from ensemble.evaluate.html import examples
from ensemble.evaluate.metrics import knn


@pytest.fixture()
def report(trained_workspace, tmp_path):
    from ensemble.evaluate.run import evaluate

    return evaluate("vit_a", trained_workspace, workers=0, out=tmp_path / "r.json")


def test_examples_are_the_worst_queries_first(tmp_path):
    from tests.conftest import write_manifest

    def manifest(name, labels):
        rows = [{"path": f"{name}{i}.jpg", "label": lab, "domain": ""} for i, lab in enumerate(labels)]
        return read_manifest(write_manifest(tmp_path / f"{name}.csv", rows))

    q = np.eye(3, dtype=np.float32)
    x = np.array([[1, 0, 0], [0.1, 0.9, 0], [0, 0, 1], [0, 1, 0.05]], np.float32)
    qm, xm = manifest("q", "abc"), manifest("x", "azcb")  # query b's nearest (x3, x1) are b then z
    picked = examples(qm, xm, q, x, knn(q, x, 2), k=2, n=2)
    assert [e["label"] for e in picked] == ["a", "b"]  # b (P@1 = 1.0) ties with a and c: manifest order
    x[3] = [0, 0.2, 0.98]  # b's only relevant image moves away: its top-1 is x1 (z), P@1 = 0, so b comes first
    picked = examples(qm, xm, q, x, knn(q, x, 2), k=2, n=2)
    assert picked[0]["label"] == "b" and picked[0]["precision"] == 0.0
    assert picked[0]["neighbours"][0]["relevant"] is False and picked[0]["neighbours"][0]["label"] == "z"
    assert picked[0]["neighbours"][0]["distance"] == pytest.approx(float(np.linalg.norm(x[1] - q[1])), abs=1e-6)


def test_eval_writes_a_self_contained_page(report, tmp_path):
    page = (tmp_path / "r.html").read_text()
    assert str(tmp_path / "r.html") in report["files"]
    assert page.count("<figure") == sum(1 + len(e["neighbours"]) for e in report["examples"])
    assert page.count("data:image/jpeg;base64,") == page.count("<figure") and "src=\"/" not in page
    precisions = [e["precision"] for e in report["examples"]]
    assert precisions == sorted(precisions) and "lowest P@5" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium not installed (apt install chromium)")
def test_a_headless_browser_renders_the_table_and_every_thumbnail(report, tmp_path):
    page = tmp_path / "r.html"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    figures = page.read_text().count("<figure")
    assert "<table class=\"summary\">" in dom and "vit_a" in dom
    assert re.search(r'data-images-loaded="(\d+)"', dom).group(1) == str(figures)  # every thumbnail decoded
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # not a blank page
