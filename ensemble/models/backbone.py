"""Image towers from open_clip or timm behind one interface: pooled features + preprocessing facts."""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..config.schema import BackboneCfg
from ..errors import EnsError

log = logging.getLogger("ensemble")


def fixed_size_error(name: str, asked: str, training_px: int, hint: str = "") -> EnsError:
    """The one-line refusal of `asked` (e.g. "eval.image_size 48 px") for a ViT whose positional embedding
    takes only its training size `training_px`; `hint` says what to do instead."""
    return EnsError(f"{name}: {asked}, but this ViT takes only its training size {training_px} px "
                    "(positional embedding)" + (f"; {hint}" if hint else ""))


class Backbone(nn.Module):
    """An image tower returning pooled features of size `out_dim`.

    Carries what preprocessing needs (`image_size`, `mean`, `std`) and a depth per parameter
    (`layer_ids`) for layer-wise lr decay.
    """

    def __init__(self, tower: nn.Module, source: str, out_dim: int, image_size: int, mean, std,
                 freeze_bn: bool = False, gem_p: float | None = None):
        super().__init__()
        self.tower, self.source, self.out_dim, self.image_size = tower, source, out_dim, image_size
        self.mean, self.std, self.freeze_bn = tuple(float(v) for v in mean), tuple(float(v) for v in std), freeze_bn
        self.gem_p = gem_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gem_p is None:
            return self.tower(x)
        return gem_pool(self.tower.forward_features(x), self.gem_p)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward (training memory). Off for inference: with it on,
        torch 2.11 traces torch.utils.checkpoint into the graph and `ens export` cannot save it."""
        self.tower.set_grad_checkpointing(enable)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Depth of each parameter (0 = stem) and the number of depths."""
        if self.source == "open_clip" and hasattr(self.tower, "transformer"):
            return _open_clip_layer_ids(self.tower)
        import timm

        groups = timm.models.group_parameters(self.tower, self.tower.group_matcher(coarse=False))
        ids = {name: gid for gid, names in groups.items() for name in names}
        return ids, max(groups) + 1

    def resample_pos_embed(self, state: dict, prefix: str = "") -> None:
        """Resize a positional embedding in `state` (keys under `prefix`) to this tower's grid."""
        if self.source == "open_clip":
            from open_clip.model import resize_pos_embed

            key = prefix + "positional_embedding"
            if key in state:
                tmp = {"visual.positional_embedding": state[key]}
                resize_pos_embed(tmp, SimpleNamespace(visual=self.tower))
                state[key] = tmp["visual.positional_embedding"]
        elif prefix + "pos_embed" in state and hasattr(self.tower, "patch_embed"):
            from timm.layers import resample_abs_pos_embed

            key = prefix + "pos_embed"
            prefix_tokens = getattr(self.tower, "num_prefix_tokens", 1)
            state[key] = resample_abs_pos_embed(state[key], list(self.tower.patch_embed.grid_size),
                                                num_prefix_tokens=prefix_tokens)

    @property
    def fixed_size(self) -> bool:
        """A ViT whose positional embedding fixes its input size (it cannot embed at another size)."""
        if self.source == "open_clip":
            return hasattr(self.tower, "positional_embedding")
        return hasattr(self.tower, "pos_embed") and not getattr(self.tower, "dynamic_img_size", False)

    def check_gem(self, key: str, arch: str) -> None:
        """Refuse GeM pooling (`key`) of a tower without a convolutional feature map to pool."""
        if self.source != "timm" or hasattr(self.tower, "pos_embed"):
            raise EnsError(f"{key}: {arch} ends in tokens, not a feature map; GeM pools convolutional towers")

    def describe(self) -> dict:
        return {"source": self.source, "out_dim": self.out_dim, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std),
                "pool": pool_name(self.gem_p)}


def pool_name(gem_p: float | None) -> str:
    """How a backbone pools, as model files describe it."""
    return f"gem p={gem_p:g}" if gem_p else "the tower's own"


def gem_pool(fmap: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a feature map [b, c, h, w] -> [b, c], in float32 (x^p of bf16
    activations overflows for large p)."""
    return fmap.float().clamp(min=eps).pow(p).mean((2, 3)).pow(1.0 / p)


def _open_clip_layer_ids(tower) -> tuple[dict[str, int], int]:
    depth = len(tower.transformer.resblocks)
    ids = {}
    for name, _ in tower.named_parameters():
        match = re.match(r"transformer\.resblocks\.(\d+)\.", name)
        if match:
            ids[name] = int(match.group(1)) + 1
        elif name.split(".")[0] in ("class_embedding", "positional_embedding", "conv1", "ln_pre", "patch_dropout"):
            ids[name] = 0
        else:
            ids[name] = depth + 1
    return ids, depth + 2


@contextmanager
def _quiet(active: bool):
    """open_clip warns 'No pretrained weights loaded' on purpose-built random models (dry runs, tests)."""
    if active:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        if active:
            logging.disable(logging.NOTSET)


def _size_of(value) -> int:
    return int(value[0] if isinstance(value, tuple | list) else value)


def build_open_clip(cfg: BackboneCfg, load_weights: bool = True, device: str | None = None) -> Backbone:
    """open_clip image tower; `pretrained` is a tag or a local file; `image_size` resamples pos-embed."""
    import open_clip

    pretrained = cfg.pretrained if load_weights else None
    meta = device == "meta"
    try:
        with torch.device("meta") if meta else nullcontext(), _quiet(pretrained is None):
            model = open_clip.create_model(cfg.arch, pretrained=pretrained, force_image_size=cfg.image_size,
                                           device="meta" if meta else "cpu", **cfg.model_kwargs)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0][:300]
        if "not found in built-ins" in reason:
            raise EnsError(f"backbone.arch: unknown open_clip model {cfg.arch!r}") from None
        raise EnsError(f"backbone.pretrained: cannot load {pretrained!r} for {cfg.arch}: {reason} "
                       "(offline? give a local weights file)") from None
    tower = model.visual
    del model
    if cfg.drop_proj:
        tower.proj = None
        out_dim = tower.transformer.width
    else:
        out_dim = tower.output_dim
    pp = tower.preprocess_cfg
    backbone = Backbone(tower, "open_clip", out_dim, _size_of(tower.image_size),
                        cfg.mean or pp["mean"], cfg.std or pp["std"], cfg.freeze_bn)
    backbone.set_grad_checkpointing(cfg.grad_checkpointing)
    return backbone


def _weights_overlay(path: str, arch: str) -> dict:
    """pretrained_cfg_overlay for a local timm weights file: its JSON sidecar plus the real class count."""
    import timm

    overlay = {}
    sidecar = Path(path).with_suffix(".json")
    if sidecar.is_file():
        try:
            described = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise EnsError(f"{sidecar}: not valid JSON ({exc}); the weights' sidecar describes them "
                           "(pretrained_cfg_overlay)") from None
        found = described.get("pretrained_cfg_overlay", {}) if isinstance(described, dict) else None
        if not isinstance(found, dict):
            raise EnsError(f"{sidecar}: expected a JSON object whose pretrained_cfg_overlay is an object")
        overlay.update(found)
    overlay["file"] = path
    classifier = overlay.get("classifier") or timm.models.get_pretrained_cfg(arch).classifier
    if isinstance(classifier, list | tuple):
        classifier = classifier[0]
    shapes = _weight_shapes(path)
    key = f"{classifier}.weight"
    overlay["num_classes"] = shapes[key][0] if key in shapes else 0
    return overlay


def _weight_shapes(path: str) -> dict[str, tuple]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def build_timm(cfg: BackboneCfg, load_weights: bool = True, device: str | None = None) -> Backbone:
    """timm model without classifier; local weights go through `pretrained_cfg_overlay`."""
    import timm

    if not timm.is_model(cfg.arch):
        raise EnsError(f"backbone.arch: unknown timm model {cfg.arch!r}")
    kwargs = dict(num_classes=0, **cfg.model_kwargs)
    pretrained = bool(cfg.pretrained) and load_weights
    if pretrained and cfg.pretrained not in ("true", "True", "hub"):
        kwargs["pretrained_cfg_overlay"] = _weights_overlay(cfg.pretrained, cfg.arch)
    if cfg.image_size and "img_size" not in kwargs and _takes_img_size(cfg.arch):
        kwargs["img_size"] = cfg.image_size
    try:
        with torch.device("meta") if device == "meta" else nullcontext():
            tower = timm.create_model(cfg.arch, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        raise EnsError(f"backbone.pretrained: cannot build {cfg.arch} with {cfg.pretrained!r}: "
                       f"{str(exc).splitlines()[0][:300]}") from None
    pcfg = tower.pretrained_cfg
    size = cfg.image_size or _size_of(pcfg.get("input_size", (3, 224, 224))[1:])
    backbone = Backbone(tower, "timm", tower.num_features, size, cfg.mean or pcfg["mean"], cfg.std or pcfg["std"],
                        cfg.freeze_bn, cfg.gem_p)
    backbone.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.gem_p is not None:
        backbone.check_gem("backbone.gem_p", cfg.arch)
    return backbone


def _takes_img_size(arch: str) -> bool:
    return any(key in arch for key in ("vit", "deit", "eva", "beit", "swin"))


def build_backbone(cfg: BackboneCfg, load_weights: bool = True, device: str | None = None) -> Backbone:
    """Build the configured tower. device='meta' builds shapes only (for --dry-run)."""
    builder = build_open_clip if cfg.source == "open_clip" else build_timm
    return builder(cfg, load_weights=load_weights, device=device)
