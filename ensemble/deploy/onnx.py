"""Exported ONNX files: the same graph and contract as the TorchScript file, run with onnxruntime.

Contract: input `images` uint8 [B,3,H,W] RGB (batch, height and width dynamic), output `embeddings`
float32 [B,D] L2-normalised; the description is stored in the file's `metadata_props` under
`ens.json`. onnxruntime itself refuses another dtype or channel count, naming the expected input.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EnsError
from .torchscript import FORMAT

META_KEY = "ens.json"
OPSET = 18  # Resize with antialias
MAX_PROTO_BYTES = 2_000_000_000  # protobuf's limit for one self-contained file


def refuse_oversized(module: nn.Module, name: str) -> None:
    """Refuse before tracing a model whose weights alone pass protobuf's 2 GB (fp32 ViT-H-14: 2.5 GB):
    the export would run for minutes and then fail to save."""
    weight_bytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if weight_bytes > MAX_PROTO_BYTES:
        raise EnsError(f"ONNX: {name}'s weights are {weight_bytes / 1e9:.1f} GB, above protobuf's 2 GB limit "
                       "for one self-contained file; export it as TorchScript (.pt) instead")


def to_onnx_bytes(module: nn.Module) -> bytes:
    """Export `module` (uint8 images -> embeddings) with dynamic batch, height and width."""

    example = torch.randint(0, 256, (2, 3, 97, 131), dtype=torch.uint8)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    module = module.eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(module, (example,), input_names=["images"], output_names=["embeddings"],
                                    dynamic_shapes={"images": dims}, opset_version=OPSET, dynamo=True,
                                    verbose=False)
        program.save(str(path), external_data=False)
        if path.stat().st_size > MAX_PROTO_BYTES:
            raise EnsError(f"ONNX: the model is {path.stat().st_size / 1e9:.1f} GB, above protobuf's 2 GB limit "
                           "for one self-contained file; export it as TorchScript (.pt) instead")
        return path.read_bytes()


def with_onnx_meta(data: bytes, meta: dict) -> bytes:
    """The model's bytes with `meta` stored in metadata_props (replacing an earlier one)."""
    import onnx

    proto = onnx.load_from_string(data)
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    return proto.SerializeToString()


def session(source: str | Path | bytes):
    """An onnxruntime CPU session on a file or on a file's bytes."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    model = source if isinstance(source, bytes) else str(source)
    try:
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for an unreadable model
        raise EnsError(f"{source if not isinstance(source, bytes) else 'ONNX bytes'}: not a readable ONNX model "
                       f"({str(exc).splitlines()[0][:200]})") from None


class OnnxRunner:
    """Callable like the TorchScript module: uint8 tensor [B,3,H,W] -> float32 tensor [B,D]."""

    def __init__(self, source: str | Path | bytes):
        self.session = session(source)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: np.ascontiguousarray(images.numpy())})[0])


def read_onnx_meta(path: str | Path) -> dict:
    """The description stored in an exported ONNX file's metadata_props."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a damaged or foreign file
        raise EnsError(f"{path}: not an ONNX file ({str(exc).splitlines()[0][:200]})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise EnsError(f"{path}: ONNX file without ens metadata (not written by `ens export`)")
    meta = json.loads(props[META_KEY])
    if meta.get("format") != FORMAT:
        raise EnsError(f"{path}: export format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta
