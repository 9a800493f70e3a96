"""`ens export`: one self-contained TorchScript or ONNX file for a student, a member or the ensemble."""

from __future__ import annotations

from ..deploy.export import export


def run(spec, workdir, out, sample, verify_manifest, fmt=None) -> str:
    desc = export(spec, workdir, out, sample, verify_manifest, fmt)
    v = desc["verify"]
    return (f"wrote {out} ({desc['file_format']}, {desc['kind']} {desc['model']}, {len(desc['members'])} model(s), "
            f"{desc['output_dim']}-d); verified on {v['images']} images: min cosine {v['min_cosine']:.5f}")
