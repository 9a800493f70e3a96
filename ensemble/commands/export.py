"""`ens export`: one self-contained TorchScript or ONNX file for a student, a member or the ensemble."""

from __future__ import annotations

from ..deploy.export import export


def run(spec, workdir, out, sample, verify_manifest, fmt=None, dtype="fp32") -> str:
    desc = export(spec, workdir, out, sample, verify_manifest, fmt, dtype)
    v = desc["verify"]
    return (f"wrote {out} ({desc['file_format']}, {desc['kind']} {desc['model']}, {len(desc['members'])} model(s), "
            f"{desc['output_dim']}-d, computes in {desc['compute_dtype']}); "
            f"verified on {v['images']} images: min cosine {v['min_cosine']:.5f}")
