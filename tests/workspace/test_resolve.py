"""MODEL names resolve to one typed object; artifacts load with what they recorded."""

import numpy as np
import pytest
import torch

from ensemble.errors import EnsError
from ensemble.workspace import ModelRef, Workspace, resolve_model


@pytest.mark.parametrize("spec, kind, name", [
    (None, "ensemble", None), ("ensemble", "ensemble", None), ("ensemble:teach", "ensemble", "teach"),
    ("student:stu", "student", "stu"), ("vit_a", "member", "vit_a"), ("out/model.pt", "export", "model.pt")])
def test_model_grammar(spec, kind, name):
    ref = ModelRef.parse(spec)
    assert (ref.kind, ref.name) == (kind, name)


def test_student_without_a_name_is_refused():
    with pytest.raises(EnsError, match="expected student:<name>"):
        ModelRef.parse("student:")


def test_every_kind_resolves_to_parts_with_their_files(distilled_workspace):
    ws = Workspace(distilled_workspace)
    member = resolve_model("vit_a", ws, device=torch.device("cpu"))
    assert member.kind == "member" and member.data and member.parts[0].file.kind == "member_model"
    assert member.parts[0].embedder.key == f"{member.parts[0].file.sha1}:{member.parts[0].features}"
    ens = resolve_model(None, ws, device=torch.device("cpu"))  # the newest ensemble: the only one here
    assert ens.name == "ensemble:teach" and [p.embedder.name for p in ens.parts] == ["vit_a", "tvit"]
    assert ens.out_dim == 8 and ens.ensemble.reducer is not None
    student = resolve_model("student:stu", ws, device=torch.device("cpu"))
    assert student.parts[0].file.extra["teacher"]["ensemble"] == "teach" and student.out_dim == 8


def test_the_graph_computes_what_extraction_computes(distilled_workspace):
    """`graph()` (what export traces and budget times) and `embed` agree on the same pixels (PNG: no draft)."""
    from ensemble.data.manifest import read_manifest
    from ensemble.deploy.torchscript import decoded_tensor

    ws = Workspace(distilled_workspace)
    ens = resolve_model("ensemble:teach", ws, device=torch.device("cpu"))
    query = read_manifest(distilled_workspace.parent / "query.csv")
    from_embed = ens.embed(query, ws, workers=0)
    with torch.no_grad():
        graph = ens.graph()
        from_graph = np.concatenate([graph(decoded_tensor(p)).numpy() for p in query.paths])
    assert np.sum(from_embed * from_graph, axis=1).min() > 0.999


def test_a_resolved_model_embeds_on_the_device_it_was_loaded_on(distilled_workspace, monkeypatch):
    """The device is chosen once, when the model is resolved (an ensemble: its recipe's `device`): an
    accelerator that the default would pick at embedding time must not receive the images of a model
    loaded on the CPU."""
    from ensemble.data.manifest import read_manifest
    from ensemble.workspace import resolve

    ws = Workspace(distilled_workspace)
    query = read_manifest(distilled_workspace.parent / "query.csv")
    ens = resolve_model("ensemble:teach", ws)  # its recipe says device: cpu
    student = resolve_model("student:stu", ws, device=torch.device("cpu"))
    assert ens.device == student.device == torch.device("cpu")
    expected = ens.embed(query, ws, workers=0, cache=False)
    monkeypatch.setattr(resolve, "pick_device", lambda name="auto": torch.device("meta"))  # "an accelerator"
    assert np.array_equal(ens.embed(query, ws, workers=0, cache=False), expected)
    assert student.embed(query, ws, workers=0, cache=False).shape == (len(query), 8)
    with pytest.raises(TypeError):  # no per-call device: it could differ from where the modules sit
        ens.embed(query, ws, workers=0, device=torch.device("cpu"))


def test_errors_name_what_is_missing(distilled_workspace, tmp_path):
    ws = Workspace(distilled_workspace)
    with pytest.raises(EnsError, match="member 'nobody': no trained model at .*run `ens train-member` first"):
        resolve_model("nobody", ws)
    with pytest.raises(EnsError, match="student 'none': no trained model at"):
        resolve_model("student:none", ws)
    with pytest.raises(EnsError, match="ensemble 'gone': not found at"):
        resolve_model("ensemble:gone", ws)
    with pytest.raises(EnsError, match="no ensemble in"):
        resolve_model(None, tmp_path)
    with pytest.raises(EnsError, match="--features neck: ensemble 'teach' was fitted on backbone features"):
        resolve_model("ensemble:teach", ws, features="neck")
