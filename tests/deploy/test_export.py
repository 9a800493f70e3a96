import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ensemble.data.manifest import read_manifest
from ensemble.deploy import export as export_mod
from ensemble.deploy.export import export
from ensemble.deploy.torchscript import decoded_tensor, jit_load
from ensemble.errors import EnsError
from ensemble.workspace import Workspace, resolve_model
from tests.conftest import ROOT, tiny_recipe

ROOT_DATA = ROOT / "sample" / "grocery"

# runs in a fresh interpreter where `import ensemble` fails: the file must need torch only
CONTRACT = r"""
import json, sys
sys.modules["ensemble"] = None
try:
    import ensemble
    raise SystemExit("ensemble was importable")
except ImportError:
    pass
import torch
m = torch.jit.load(sys.argv[1])
out = {}
for b, h, w in [(1, 1, 1), (1, 3000, 200), (1, 224, 224), (3, 37, 500)]:
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h))
    y = m(x)
    out[f"{b}x{h}x{w}"] = [list(y.shape), str(y.dtype), y.norm(dim=1).tolist(), bool(torch.isfinite(y).all())]
x = torch.randint(0, 256, (1, 3, 64, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
batch = torch.cat([x, torch.zeros(1, 3, 64, 80, dtype=torch.uint8)])
out["batch_consistent"] = float((m(batch)[0] - m(x)[0]).abs().max())
print(json.dumps(out))
"""


def run_contract(path, tmp_path):
    script = tmp_path / "contract.py"
    script.write_text(CONTRACT)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("spec, dim", [("student:stu", 8), ("ensemble:teach", 8)])
def test_export_contract_in_a_fresh_process(distilled_workspace, tmp_path, spec, dim):
    out = tmp_path / "model.pt"
    desc = export(spec, distilled_workspace, out, sample=4)
    assert desc["verify"]["min_cosine"] >= 0.999 and desc["verify"]["images"] == 4
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["output_dim"] == dim and meta["members"][0]["image_size"] == 32
    assert meta["members"][0]["mean"] and meta["members"][0]["checkpoint"]
    assert meta["feature_power"] == (0.5 if spec.startswith("ensemble") else 1.0)
    result = run_contract(out, tmp_path)
    for key in ("1x1x1", "1x3000x200", "1x224x224", "3x37x500"):
        shape, dtype, norms, finite = result[key]
        assert shape == [int(key.split("x")[0]), dim] and dtype == "torch.float32" and finite
        assert np.allclose(norms, 1.0, atol=1e-5)
    assert result["batch_consistent"] < 1e-5


def test_exported_student_matches_ens_eval_embedding(distilled_workspace, tmp_path):
    out = tmp_path / "stu.pt"
    export("student:stu", distilled_workspace, out, sample=4)
    query = read_manifest(distilled_workspace.parent / "query.csv")
    model = resolve_model(str(out), distilled_workspace)
    assert model.kind == "export"
    ws = Workspace(distilled_workspace)
    from_file = model.embed(query, ws, workers=0)
    from_package = resolve_model("student:stu", ws).embed(query, ws, workers=0)
    cos = np.sum(from_file * from_package, axis=1)
    assert from_file.shape == (4, 8) and cos.min() > 0.999  # the contract (DESIGN.md)
    module = jit_load(out)
    one = module(decoded_tensor(query.paths[0]))[0].numpy()
    assert np.allclose(one, from_file[0], atol=1e-5)
    # the file's embeddings are cached with their checksum: a damaged cache file is embedded again, not read
    (cached,) = (ws.cache_dir / f"export-{out.name}").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:100])
    assert np.array_equal(model.embed(query, ws, workers=0), from_file)
    assert np.array_equal(np.load(cached), from_file)  # and rewritten whole


def test_an_exported_files_cache_tells_equal_csvs_in_two_folders_apart(distilled_workspace, tmp_path):
    import shutil

    from tests.conftest import write_manifest

    out = tmp_path / "stu.pt"
    export("student:stu", distilled_workspace, out, sample=2)
    ws = Workspace(distilled_workspace)
    model = resolve_model(str(out), ws)
    query = read_manifest(distilled_workspace.parent / "query.csv")
    manifests = []
    for folder, sources in (("a", query.paths[:2]), ("b", query.paths[2:4])):  # other images, same names
        (tmp_path / folder).mkdir()
        for i, source in enumerate(sources):
            shutil.copy(source, tmp_path / folder / f"{i}.jpg")
        rows = [{"path": f"{i}.jpg", "label": "x", "domain": ""} for i in range(2)]
        manifests.append(read_manifest(write_manifest(tmp_path / folder / "m.csv", rows)))
    first, second = (model.embed(m, ws, workers=0) for m in manifests)
    assert not np.allclose(first, second, atol=1e-2)
    assert np.allclose(second, model.embed(manifests[1], ws, workers=0, cache=False), atol=1e-6)


def test_export_refuses_when_the_file_disagrees_with_the_package(distilled_workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "MIN_COSINE", 1.5)
    out = tmp_path / "bad.pt"
    with pytest.raises(EnsError, match=r"cosine .* < 1.5 against `ens eval`.*file not written"):
        export("student:stu", distilled_workspace, out, sample=2)
    assert not out.exists() and not list(tmp_path.glob(".bad.pt*"))


def test_a_damaged_export_description_is_exported_again(distilled_workspace, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    for folder in ("members", "ensemble", "students"):
        shutil.copytree(distilled_workspace / folder, runs / folder)
    out = export_mod.export_or_reuse("stu", runs)
    first = out.stat().st_mtime_ns
    assert export_mod.export_or_reuse("stu", runs) == out and out.stat().st_mtime_ns == first  # reused
    out.with_suffix(".json").write_text("{")
    assert export_mod.export_or_reuse("stu", runs) == out and out.stat().st_mtime_ns != first  # exported again
    assert json.loads(out.with_suffix(".json").read_text())["members"][0]["checkpoint_sha1"]


def test_export_errors(distilled_workspace, tmp_path):
    with pytest.raises(EnsError, match="expected a .pt file name"):
        export("student:stu", distilled_workspace, tmp_path / "x.bin")
    not_ts = tmp_path / "plain.pt"
    torch.save({"a": 1}, not_ts)
    with pytest.raises(EnsError, match=r"not a TorchScript file \(PytorchStreamReader failed locating file "
                                       r"constants.pkl: file not found\)$"):  # without torch's advice on zips
        resolve_model(str(not_ts), distilled_workspace)
    checkpoint = distilled_workspace / "students" / "stu" / "best.pt"
    with pytest.raises(EnsError, match=r"best.pt: an ens training checkpoint \(best.pt / last.pt\), not an exported "
                                       r"file; pass the member's name or student:<name> as MODEL"):
        resolve_model(str(checkpoint), distilled_workspace)


def test_show_describes_students_and_exported_files(distilled_workspace, tmp_path):
    from click.testing import CliRunner

    from ensemble.cli import main

    out = tmp_path / "s.pt"
    export("student:stu", distilled_workspace, out, sample=2)
    shown = CliRunner().invoke(main, ["show", "student:stu", "--workdir", str(distilled_workspace)])
    assert shown.exit_code == 0 and json.loads(shown.output)["embedding_dim"] == 8
    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.exit_code == 0 and json.loads(shown.output)["model"] == "student:stu"
    missing = CliRunner().invoke(main, ["show", "student:none", "--workdir", str(distilled_workspace)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")


def test_exported_file_refuses_input_outside_its_contract(distilled_workspace, tmp_path):
    out = tmp_path / "guard.pt"
    export("student:stu", distilled_workspace, out, sample=2)
    module = jit_load(out)
    ok = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    assert module(ok).shape == (2, 8)
    bad = [(ok.float() / 255, r"expected a uint8 tensor \[B,3,H,W\].*\(x \* 255\)"),
           (ok.bool(), "expected a uint8 tensor"),
           (ok[:, :1], r"expected shape \[B,3,H,W\] .*got \[2, 1, 20, 30\]"),
           (torch.cat([ok, ok[:, :1]], 1), r"got \[2, 4, 20, 30\]"),
           (ok.permute(0, 2, 3, 1).contiguous(), r"for \[B,H,W,3\] pass images.permute\(0, 3, 1, 2\)"),
           (ok[0], r"got \[3, 20, 30\]"),
           (ok[:0], "non-empty batch")]
    for images, message in bad:
        with pytest.raises(Exception, match=message):
            module(images)


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(distilled_workspace, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from ensemble import atomic
    from ensemble.cli import main

    real_fdopen = atomic.os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    out = tmp_path / "exports" / "s.pt"
    result = CliRunner().invoke(main, ["export", "student:stu", "--out", str(out), "--sample", "2",
                                       "--workdir", str(distilled_workspace)])
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "Traceback" not in result.output
    assert f"error: {out}: No space left on device (no space left on the device; free some or write it to another " \
        "folder)" in result.output  # --out lies outside the workspace: no advice to change --workdir
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: type("U", (), {"free": 10})())
    result = CliRunner().invoke(main, ["export", "student:stu", "--out", str(out), "--sample", "2",
                                       "--workdir", str(distilled_workspace)])
    assert result.exit_code == 2 and "bytes to write, 10 free" in result.output and list(out.parent.iterdir()) == []


def test_export_is_checked_against_what_ens_eval_computes_on_jpegs(distilled_workspace, tmp_path):
    """`ens eval` decodes JPEGs at draft scale (here 8x smaller: 348 px photos, a 32 px model): the
    export's reference is that path, not a full decode, so a passing export agrees with `ens eval`."""
    from ensemble.deploy.export import reference_embeddings
    from ensemble.embed.extract import extract_many
    from tests.conftest import ROOT, write_manifest

    ws = Workspace(distilled_workspace)
    model = resolve_model("student:stu", ws, device=torch.device("cpu"))
    jpegs = read_manifest(ROOT / "sample" / "grocery" / "query.csv", require_label=False)
    rows = read_manifest(write_manifest(tmp_path / "q.csv", [{"path": p, "label": "", "domain": ""}
                                                            for p in jpegs.paths[:6]]), require_label=False)
    as_eval = model.embed(rows, ws, workers=0)
    reference = reference_embeddings(model, list(rows.paths))
    full = model.combine(extract_many(model.embedders, rows.paths, torch.device("cpu"), model.tta, workers=0,
                                      jpeg_draft=False))
    assert (1 - np.sum(full * as_eval, axis=1)).max() > 1e-5  # the draft changes these embeddings...
    assert (1 - np.sum(reference * as_eval, axis=1)).max() < 1e-6  # ...and the export's reference has it too
    # the gate compares the file with eval on the same (draft) pixels, so it measures the export alone;
    # the file on fully decoded images is reported beside it, and differs by what the draft changes
    from ensemble.deploy.export import export

    desc = export("student:stu", ws, tmp_path / "stu.pt", sample=6, verify_manifest=str(tmp_path / "q.csv"))
    checked = desc["verify"]
    assert checked["min_cosine"] > 1 - 1e-6 and checked["images"] == 6
    assert checked["full_decode_min_cosine"] == pytest.approx(float(np.sum(full * as_eval, axis=1).min()), abs=1e-5)


ONNX_CONTRACT = r"""
import json, sys
sys.modules["ensemble"] = None
sys.modules["torch"] = None  # the file needs onnxruntime only
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = json.loads(s.get_modelmeta().custom_metadata_map["ens.json"])
out = {"dim": meta["output_dim"]}
for b, h, w in [(1, 1, 1), (1, 3000, 200), (3, 37, 500)]:
    x = np.random.default_rng(h).integers(0, 256, (b, 3, h, w), dtype=np.uint8)
    y = s.run(None, {"images": x})[0]
    out[f"{b}x{h}x{w}"] = [list(y.shape), str(y.dtype), np.linalg.norm(y, axis=1).tolist()]
for name, x in [("float", np.zeros((1, 3, 8, 8), np.float32)), ("grey", np.zeros((1, 1, 8, 8), np.uint8)),
                ("nhwc", np.zeros((1, 8, 8, 3), np.uint8))]:
    try:
        s.run(None, {"images": x})
        out[name] = "accepted"
    except Exception as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("spec", ["student:stu", "ensemble:teach"])
def test_onnx_export_keeps_the_contract_and_runs_in_ens_eval(distilled_workspace, tmp_path, spec):
    from click.testing import CliRunner

    from ensemble.cli import main

    out = tmp_path / "model.onnx"
    desc = export(spec, distilled_workspace, out, sample=4, fmt="onnx")
    assert desc["file_format"] == "onnx" and desc["verify"]["min_cosine"] >= 0.999
    script = tmp_path / "onnx_contract.py"
    script.write_text(ONNX_CONTRACT)
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in ("1x1x1", "1x3000x200", "3x37x500"):
        shape, dtype, norms = result[key]
        assert shape == [int(key[0]), 8] and dtype == "float32" and np.allclose(norms, 1.0, atol=1e-5)
    assert "expected: (tensor(uint8))" in result["float"]
    assert "images" in result["grey"] and "Expected: 3" in result["grey"]
    assert "Expected: 3" in result["nhwc"]
    # ens eval runs the file with onnxruntime and scores what the package scores (PNG images, no draft)
    ws = Workspace(distilled_workspace)
    query = read_manifest(distilled_workspace.parent / "query.csv")
    from_file = resolve_model(str(out), ws).embed(query, ws, workers=0)
    from_package = resolve_model(spec, ws).embed(query, ws, workers=0)
    assert np.sum(from_file * from_package, axis=1).min() > 0.999
    shown = CliRunner().invoke(main, ["show", str(out), "--workdir", str(distilled_workspace)])
    assert shown.exit_code == 0 and json.loads(shown.output)["output_dim"] == 8


def test_export_format_and_file_name_must_agree(distilled_workspace, tmp_path):
    with pytest.raises(EnsError, match=r"--format onnx writes \.onnx"):
        export("student:stu", distilled_workspace, tmp_path / "x.pt", fmt="onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(EnsError, match="junk.onnx: not an ONNX file"):
        resolve_model(str(tmp_path / "junk.onnx"), distilled_workspace)


def test_onnx_refuses_weights_above_protobufs_limit_before_tracing(distilled_workspace, tmp_path, monkeypatch):
    from ensemble.deploy import onnx as onnx_mod

    model = resolve_model("student:stu", distilled_workspace)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.graph().parameters())
    monkeypatch.setattr(onnx_mod, "MAX_PROTO_BYTES", weight_bytes - 1)  # stands in for fp32 ViT-H-14's 2.5 GB

    def traced(*args, **kwargs):
        raise AssertionError("traced a model whose weights were already over the limit")

    monkeypatch.setattr(export_mod, "to_onnx_bytes", traced)
    refusal = r"ONNX: student:stu's weights are 0\.0 GB, above protobuf's 2 GB limit .* TorchScript"
    with pytest.raises(EnsError, match=refusal):
        export("student:stu", distilled_workspace, tmp_path / "big.onnx", sample=4)
    assert not (tmp_path / "big.onnx").exists()
    monkeypatch.setattr(onnx_mod, "MAX_PROTO_BYTES", weight_bytes + 10**6)  # under the limit: the trace runs
    with pytest.raises(AssertionError, match="traced a model"):
        export("student:stu", distilled_workspace, tmp_path / "big.onnx", sample=4)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module")
def sample_member(tmp_path_factory):
    """A tiny member trained one epoch on the grocery sample shipped in sample/ (no ../shared needed)."""
    from ensemble.config.load import load_member_cfg
    from ensemble.train.member import train_member

    folder = tmp_path_factory.mktemp("sample_ws")
    recipe = tiny_recipe(folder, ROOT / "configs" / "data" / "sample.yaml", name="grocery_vit")
    train_member(load_member_cfg(recipe, ["stages=[{train: [all], epochs: 1}]", "eval.enabled=false"]),
                 folder / "runs")
    return folder / "runs"


@pytest.mark.parametrize("device", DEVICES)
def test_an_exported_file_embeds_on_every_device_as_the_package_does(sample_member, tmp_path, device):
    ws = Workspace(sample_member)
    out = tmp_path / "grocery_vit.pt"
    export("grocery_vit", ws, out, sample=4)
    query = read_manifest(ROOT_DATA / "query.csv")
    from_file = resolve_model(str(out), ws, device=torch.device(device)).embed(query, ws, workers=0, cache=False)
    from_package = resolve_model("grocery_vit", ws, device=torch.device("cpu")).embed(query, ws, workers=0, cache=False)
    assert from_file.shape == (len(query), 8) and from_file.dtype == np.float32
    assert np.sum(from_file * from_package, axis=1).min() > 0.999


def test_a_bf16_eval_member_embeds_under_autocast_and_exports_in_fp32(sample_member, tmp_path):
    from ensemble.config.load import load_member_cfg
    from ensemble.train.member import train_member

    recipe = tiny_recipe(tmp_path, ROOT / "configs" / "data" / "sample.yaml", name="grocery_vit")
    sets = ["stages=[{train: [all], epochs: 1}]", "eval.enabled=false", "eval.precision=bf16", "name=grocery_bf16"]
    train_member(load_member_cfg(recipe, sets), sample_member)  # the same weights, derived in seconds
    ws, cpu = Workspace(sample_member), torch.device("cpu")
    query = read_manifest(ROOT_DATA / "query.csv")
    fp32, bf16 = (resolve_model(name, ws, device=cpu) for name in ("grocery_vit", "grocery_bf16"))
    assert bf16.parts[0].embedder.autocast == torch.bfloat16 and fp32.parts[0].embedder.autocast is None
    file_sha1 = bf16.parts[0].file.sha1
    assert bf16.parts[0].embedder.key == f"{file_sha1}:neck:bf16"  # cached apart from an fp32 run of the file
    assert fp32.parts[0].embedder.key == f"{fp32.parts[0].file.sha1}:neck"  # fp32 keys as before
    a, b = (m.embed(query, ws, workers=0, cache=False) for m in (fp32, bf16))
    cosine = np.sum(a * b, axis=1)
    assert b.dtype == np.float32 and cosine.min() > 0.99 and np.abs(a - b).max() > 1e-4  # bf16 ran, not fp32
    out = tmp_path / "bf16.pt"
    desc = export("grocery_bf16", ws, out, sample=4)  # checked against the fp32 path: the file computes in fp32
    assert desc["verify"]["min_cosine"] >= 0.999 and desc["compute_dtype"] == "float32"
    from_file = resolve_model(str(out), ws, device=cpu).embed(query, ws, workers=0, cache=False)
    assert np.sum(from_file * a, axis=1).min() > 0.999


def weight_bytes(path) -> int:
    return sum(p.numel() * p.element_size() for p in jit_load(path).parameters())


@pytest.mark.parametrize("spec, dtype", [("student:stu", "fp16"), ("ensemble:teach", "fp16"), ("student:stu", "bf16")])
def test_a_half_precision_export_keeps_the_contract_at_half_the_size(distilled_workspace, tmp_path, spec, dtype):
    full, half = tmp_path / "fp32.pt", tmp_path / f"{dtype}.pt"
    export(spec, distilled_workspace, full, sample=4)
    desc = export(spec, distilled_workspace, half, sample=4, dtype=dtype)
    assert desc["compute_dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[dtype]
    assert desc["verify"]["min_cosine"] >= 0.999  # against the package's fp32 embedding
    assert {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype] in {p.dtype for p in jit_load(half).parameters()}
    assert weight_bytes(half) < 0.55 * weight_bytes(full)  # the members' weights halved (fusion stays fp32)
    result = run_contract(half, tmp_path)  # a fresh process without the package: float32 out, unit norm
    for key in ("1x1x1", "1x3000x200", "3x37x500"):
        shape, out_dtype, norms, finite = result[key]
        assert out_dtype == "torch.float32" and finite and np.allclose(norms, 1.0, atol=1e-3)
    with pytest.raises(EnsError, match="--dtype fp8: expected one of fp32, fp16, bf16"):
        export(spec, distilled_workspace, tmp_path / "x.pt", sample=4, dtype="fp8")
    with pytest.raises(EnsError, match=r"--dtype fp16: ONNX files are exported in fp32 only; write a \.pt"):
        export(spec, distilled_workspace, tmp_path / "x.onnx", sample=4, dtype="fp16")
