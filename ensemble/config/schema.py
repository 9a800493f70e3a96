"""Typed recipe schemas. The field defaults below are the one defaults file of the project:
recipes are short diffs over them, and unknown keys are an error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

# a run's name becomes a folder under the workspace: no separators, no leading dot
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# seeds python's, numpy's and torch's generators: numpy refuses a negative one, torch overflows past 2**64
# (the loaders seed with seed * 1000 + epoch), so a seed is kept to numpy's classic range
Seed = Annotated[int, Field(ge=0, lt=2**32)]
# a margin on the target class, radians (ArcFace) or cosine (CosFace): past pi/2 the target is pushed beyond
# orthogonal to its own centre, a typo rather than a setting (GUIE solutions used 0.1-0.8)
MAX_MARGIN_RAD = 1.5708  # pi/2, rounded up
MarginRad = Annotated[float, Field(ge=0, le=MAX_MARGIN_RAD)]
MAX_IMAGE_PX = 1024  # beyond any GUIE recipe (<= 448); a typo like 10000 fails here, not in the allocator


def repeated(items: list) -> list:
    """The items listed more than once (sorted): the lists of seeds and members name each one once."""
    return sorted({x for x in items if items.count(x) > 1})


class Strict(BaseModel):
    """Base for every config block: unknown keys fail, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class BackboneCfg(Strict):
    """Which image tower to build and how (open_clip or timm)."""

    source: Literal["open_clip", "timm"] = "open_clip"
    arch: str = "ViT-H-14"
    pretrained: str | None = None  # open_clip tag, local file, or (timm) true/"file" path
    image_size: PositiveInt | None = Field(None, le=MAX_IMAGE_PX)  # None: the architecture's default
    drop_proj: bool = False  # open_clip: use pre-projection features
    init_from: str | None = None  # a member name in the workspace
    # WiSE-FT: the saved backbone is (1 - wise_ft) x its starting weights + wise_ft x the fine-tuned ones
    # (null: the fine-tuned weights); keeps what the pretrained backbone knew about other domains
    wise_ft: float | None = Field(None, gt=0, le=1)
    # feature distillation from the frozen starting backbone while the backbone learns: adds
    # feature_kd x mean(1 - cos(pooled feature, starting backbone's pooled feature)) to the loss
    feature_kd: float | None = Field(None, gt=0)
    # GeM pooling (Radenovic et al.) of a convolutional timm tower's last feature map in place of its
    # average pool: mean(x^p)^(1/p); p = 1 is the average, larger p moves toward the maximum. For towers
    # ending in a ReLU (MobileNet, EfficientNet-Lite): activations are clamped at 1e-6 first
    gem_p: float | None = Field(None, ge=1, le=16)
    grad_checkpointing: bool = False
    freeze_bn: bool = False  # keep BatchNorm statistics frozen (needed for folded-BN weights)
    channels_last: bool = True  # NHWC convolutions: 1.6x faster MobileNet on the CPU here
    model_kwargs: dict = Field(default_factory=dict)
    # backbone keys used instead when `pretrained` names a local file that is missing, e.g. a hub
    # tag for users who have the repository but not the shared weights
    fallback: dict | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _check_stats(self):
        if self.gem_p is not None and self.source != "timm":
            raise ValueError(f"gem_p pools a convolutional feature map: source timm only, got {self.source}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ValueError(f"{key} must have 3 values (RGB), got {len(value)}")
        return self


class NeckCfg(Strict):
    """Dropout + Linear layers from the backbone feature to the embedding."""

    dims: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    batchnorm: bool = False


class MarginScheduleCfg(Strict):
    """Margin per epoch: min(start + step * epoch, max)."""

    start: MarginRad = 0.1
    step: float = Field(0.1, ge=0)
    max: MarginRad = 0.8


class AdaptiveMarginCfg(Strict):
    """Per-class margin a * minmax(n_c ** -1/4) + b (4th place GUIE)."""

    a: MarginRad = 0.45
    b: MarginRad = 0.05

    @model_validator(mode="after")
    def _largest_within_bound(self):
        if self.a + self.b > MAX_MARGIN_RAD:
            raise ValueError(f"a + b = {self.a + self.b:g}: the rarest class's margin; expected at most pi/2 "
                             f"({MAX_MARGIN_RAD})")
        return self


class HeadCfg(Strict):
    """Margin-softmax classification head used to train members."""

    type: Literal["arcface", "cosface"] = "arcface"
    scale: float = Field(30.0, gt=0)
    margin_rad: MarginRad = 0.5
    margin_schedule: MarginScheduleCfg | None = None
    adaptive_margin: AdaptiveMarginCfg | None = None
    subcenters: PositiveInt = 1
    # one softmax per domain over a shared neck (UnED / UDON): a sample competes only with its own
    # domain's classes (null/false: one softmax over all classes)
    per_domain: bool | None = None


class SamplerCfg(Strict):
    """Class-balanced epoch: drop classes < min, cap at max, oversample to a floor; optionally
    domain-balanced on top: each domain's share of the epoch is proportional to (its class-balanced
    size)^domain_alpha (0: equal shares per domain, 1: as without; null: off)."""

    min_per_class: PositiveInt = 3
    max_per_class: PositiveInt = 100
    oversample_to: int = Field(20, ge=0)
    domain_alpha: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _floor_within_cap(self):
        if self.oversample_to > self.max_per_class:
            raise ValueError(f"oversample_to {self.oversample_to} > max_per_class {self.max_per_class}: every class "
                             "would be repeated past its cap; expected oversample_to <= max_per_class")
        return self


class AugmentCfg(Strict):
    """Named training augmentations (albumentations); set an op to null to disable it."""

    resize: Literal["resize", "random_resized_crop"] = "resize"
    crop_scale: tuple[float, float] = (0.6, 1.0)
    ops: dict[str, dict | None] = Field(
        default_factory=lambda: {
            "hflip": {"p": 0.5},
            "color": {"p": 0.5, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02},
            "shift_scale_rotate": {"p": 0.5, "shift": 0.1, "scale": 0.1, "rotate_deg": 10},
            "coarse_dropout": {"p": 0.3, "holes": 4, "size_frac": 0.1},
        }
    )


class OptimCfg(Strict):
    """Optimizer and schedule; backbone lr = lr * backbone_lr_scale."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    backbone_lr_scale: float = Field(1e-3, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = 0.9
    batch_size: PositiveInt = 32
    accum_steps: PositiveInt = 1
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    grad_clip: float | None = Field(None, gt=0)
    # exponential moving average of the model's weights (timm ModelEmaV3): the saved model is the average.
    # Its decay ramps up as 1 - step^-0.75 (step: optimizer steps so far, over all stages) and stops at
    # ema_decay, so a short run keeps no trace of its starting weights; None saves the raw weights
    ema_decay: float | None = Field(None, gt=0, lt=1)
    max_steps_per_epoch: PositiveInt | None = None  # smoke runs: end each epoch after this many steps


class StageCfg(Strict):
    """One training stage: which parts learn, for how long, optional lr overrides."""

    train: list[Literal["backbone", "neck", "head", "all"]] = Field(min_length=1)
    epochs: PositiveInt
    lr: float | None = Field(None, gt=0)
    backbone_lr_scale: float | None = Field(None, ge=0)


class LoaderCfg(Strict):
    """Image decoding and loading."""

    workers: int = Field(2, ge=0)
    max_fail_ratio: float = Field(0.01, ge=0, le=1)
    jpeg_draft: bool = True  # libjpeg DCT-domain downscale to >= the target size
    nonfinite: Literal["stop", "skip"] = "stop"  # what a NaN/inf loss does


class EvalCfg(Strict):
    """How the member is evaluated after training (query vs index of the data config)."""

    enabled: bool = True
    features: Literal["neck", "backbone"] = "neck"
    image_size: PositiveInt | None = Field(None, le=MAX_IMAGE_PX)  # None: the backbone's image size
    flip_tta: bool = True
    # multi-scale TTA: the model also embeds at these square sizes and averages the L2-normalised
    # features over every size (and flip) wherever it embeds, export included. Not part of the recipe key
    extra_sizes: list[Annotated[int, Field(gt=0, le=MAX_IMAGE_PX)]] = Field(default_factory=list)
    batch_size: PositiveInt = 64
    # GeM pooling with this p wherever the trained model embeds (eval, embed, fuse, distillation targets,
    # export), whatever pooled it in training: a model trained with average pooling can retrieve better
    # by GeM. Not part of the recipe key, so the same recipe with another eval.gem_p reuses the weights
    gem_p: float | None = Field(None, ge=1, le=16)
    # autocast dtype wherever the trained model embeds in the package (eval, embed, fuse, distillation
    # targets, galleries): bf16 uses a GPU's tensor-core rate (its speed-up over fp32 not measured here
    # yet; fp16 on GPUs without bf16; on a CPU without native bf16 it is slower). Exported files compute
    # in fp32 (or `ens export --dtype`); export checks them against fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class MemberCfg(Strict):
    """A member recipe: backbone + neck + head trained in stages on a data config."""

    name: str | None = Field(None, pattern=NAME_PATTERN)
    seed: Seed = 0
    data: Path
    device: str = "auto"
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    neck: NeckCfg = Field(default_factory=NeckCfg)
    head: HeadCfg = Field(default_factory=HeadCfg)
    sampler: SamplerCfg = Field(default_factory=SamplerCfg)
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    loader: LoaderCfg = Field(default_factory=LoaderCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    stages: list[StageCfg] = Field(
        default_factory=lambda: [
            StageCfg(train=["neck", "head"], epochs=6),
            StageCfg(train=["backbone"], epochs=3),
        ],
        min_length=1,
    )

    @model_validator(mode="after")
    def _check_eval_pool(self):
        if self.eval.gem_p is not None and self.backbone.source != "timm":
            raise ValueError(f"eval.gem_p pools a convolutional feature map: backbone.source timm only, "
                             f"got {self.backbone.source}")
        return self


class DistillLossCfg(Strict):
    """Weights of the distillation terms (0 switches a term off) and their shape parameters."""

    cosine: float = Field(1.0, ge=0)  # 1 - cos(student, target)
    smooth_l1: float = Field(1.0, ge=0)  # Huber on the L2-normalised vectors, summed over dims
    smooth_l1_beta: float = Field(0.05, gt=0)
    rkd: float = Field(1.0, ge=0)  # RKD distance: batch pairwise distances, each set / its mean
    sim_kl: float = Field(0.0, ge=0)  # KL of the batch similarity distributions (teacher || student)
    temperature: float = Field(0.05, gt=0)  # for sim_kl
    # the teacher side of sim_kl: the fused target ("fused"), or the ensemble's concatenation before its
    # reducer ("concat": the members' features merged, signed power, L2 per group), so the student's batch
    # geometry follows what the 64-d reducer compressed away
    sim_kl_teacher: Literal["fused", "concat"] = "fused"
    arcface: float = Field(0.0, ge=0)  # margin-softmax on labels where the distill manifest has them
    # multi-teacher (AM-RADIO / UNIC / UDON): one Linear projector per ensemble member maps the student's
    # backbone feature to that member's own feature; adds members x mean over members of (1 - cos)
    members: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _concat_needs_sim_kl(self):
        if self.sim_kl_teacher == "concat" and self.sim_kl == 0:
            raise ValueError("sim_kl_teacher: concat needs sim_kl > 0 (it is the teacher side of that term)")
        return self

    @model_validator(mode="after")
    def _some_term(self):
        terms = ("cosine", "smooth_l1", "rkd", "sim_kl", "arcface", "members")
        if not any(getattr(self, t) > 0 for t in terms):
            raise ValueError(f"every term's weight is 0, nothing to train on; expected one of {', '.join(terms)} > 0")
        return self


class StudentCfg(MemberCfg):
    """A student recipe: a member recipe's keys plus the teacher ensemble and the distillation loss.

    The data config's `distill:` manifest (default `train:`) gives the images; labels are optional
    unless `loss.arcface` > 0.
    """

    teacher: str | None = None  # ensemble name in the workspace; None: the newest
    # lstsq: start the (single-Linear) neck at the ridge-regression fit of the targets on the initial
    # backbone's features of the distill images, so training starts from the best linear student
    neck_init: Literal["random", "lstsq"] = "lstsq"
    neck_init_ridge: float = Field(0.1, ge=0)
    loss: DistillLossCfg = Field(default_factory=DistillLossCfg)
    augment: AugmentCfg = Field(default_factory=lambda: AugmentCfg(ops={"hflip": {"p": 0.5}}))
    stages: list[StageCfg] = Field(
        default_factory=lambda: [StageCfg(train=["neck"], epochs=1), StageCfg(train=["all"], epochs=3)],
        min_length=1,
    )
    # a uniform model soup (Wortsman et al., 2022): the recipe is trained once per seed (`seed` and
    # these, each an ordinary student `<name>_seed<s>`) and the student is the mean of their weights;
    # one model, one member's cost. Empty: one run.
    soup_seeds: list[Seed] = []

    @model_validator(mode="after")
    def _check_head(self):
        if self.loss.arcface == 0 and any("head" in s.train for s in self.stages):
            raise ValueError("stages: a 'head' stage needs loss.arcface > 0 (the student has no head otherwise)")
        if self.neck_init == "lstsq" and (len(self.neck.dims) != 1 or self.neck.batchnorm):
            raise ValueError("neck_init: lstsq needs a neck of one Linear layer (neck.dims: [D], batchnorm: false)")
        return self

    @model_validator(mode="after")
    def _check_soup(self):
        if repeated([self.seed, *self.soup_seeds]):
            raise ValueError(f"soup_seeds: expected seeds other than `seed` ({self.seed}), each once; got "
                             f"{self.soup_seeds}")
        if self.soup_seeds and (self.neck_init != "lstsq" or not (self.backbone.pretrained or self.backbone.init_from)):
            raise ValueError("soup_seeds: the runs averaged must share their starting weights: needs neck_init: "
                             "lstsq and backbone.pretrained or backbone.init_from (a random start differs per seed)")
        return self


class DataCfg(Strict):
    """A data config: manifests relative to the YAML's folder."""

    train: Path | None = None
    query: Path | None = None
    index: Path | None = None
    distill: Path | None = None


class TTACfg(Strict):
    """Test-time augmentation for embedding: flip averaging and extra square sizes."""

    flip: bool = True
    extra_sizes: list[Annotated[int, Field(gt=0, le=MAX_IMAGE_PX)]] = Field(default_factory=list)


class ProjectionCfg(Strict):
    """Training of a learned projection (`projection: learned`): CosFace on the fit set's labels (weight
    label_weight), plus optionally a neighbour term that keeps each row's neighbours in the
    concatenation (no labels used; rows with an empty label join it, not the label loss); label_weight 0
    with a neighbour term: neighbours only."""

    epochs: PositiveInt = 20
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: PositiveInt = 256
    scale: float = Field(30.0, gt=0)
    margin: float = Field(0.2, ge=0)
    label_weight: float = Field(1.0, ge=0)
    # weight of the neighbour term: cross-entropy from the softmax over in-batch cosine similarities in the
    # concatenation (temperature neighbour_tau_teacher) to the same softmax after projection (neighbour_tau)
    neighbour_weight: float = Field(0.0, ge=0)
    neighbour_tau_teacher: float = Field(0.02, gt=0)
    neighbour_tau: float = Field(0.05, gt=0)
    # one fit per seed (its batch order), all from the same PCA start; the projection is the mean of their
    # matrices (a uniform soup), steadier than any one fit. [0]: one fit.
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, seeds: list[int]) -> list[int]:
        if repeated(seeds):
            raise ValueError(f"expected each seed once, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _something_to_train(self):
        if self.label_weight == 0 and self.neighbour_weight == 0:
            raise ValueError("label_weight and neighbour_weight are both 0: the projection would not train; "
                             "set one of them above 0 (or projection: pca)")
        return self


class EnsembleCfg(Strict):
    """How members are fused: which feature, merge per architecture, reducer, and the set it is fitted on."""

    name: str | None = Field(None, pattern=NAME_PATTERN)
    members: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(min_length=1)
    features: Literal["neck", "backbone"] = "backbone"
    merge: Literal["mean", "concat"] = "mean"  # mean: average members of one architecture first
    # signed power applied to every member feature before its L2 normalisation (0.5: signed square root,
    # "power normalisation"); 1: the features as they are
    power: float = Field(1.0, gt=0, le=1)
    pca: PositiveInt | None = 64  # None: plain concatenation
    whiten: bool = False
    # pca: the top principal directions; learned: those directions trained further with a margin loss on
    # the fit set's labels (needs `pca` dims, no whitening, and labelled fit images unless learned.label_weight is 0)
    projection: Literal["pca", "learned"] = "pca"
    learned: ProjectionCfg = Field(default_factory=ProjectionCfg)
    fit_on: str = "index"  # train | query | index | distill of the data config, or a manifest CSV
    data: Path | None = None  # data config; default: the first member's
    tta: TTACfg = Field(default_factory=TTACfg)
    batch_size: PositiveInt = 64
    workers: int = Field(2, ge=0)
    device: str = "auto"

    @model_validator(mode="after")
    def _check_projection(self):
        if self.projection == "learned" and (self.pca is None or self.whiten):
            raise ValueError("projection: learned needs `pca` dims and whiten: false")
        if self.whiten and self.pca is None:  # a plain concatenation has no PCA output to whiten
            raise ValueError("whiten: true needs `pca` dims (nothing is whitened in a plain concatenation)")
        return self

    @field_validator("members")
    @classmethod
    def _each_member_once(cls, members: list[str]) -> list[str]:
        twice = repeated(members)
        if twice:  # a typo: the same model fused with itself
            raise ValueError(f"{', '.join(twice)} listed twice; each member once")
        return members


class PipelineCfg(Strict):
    """`ens pipeline`: member recipes, an ensemble config, a student recipe (paths relative to the YAML)."""

    name: str | None = Field(None, pattern=NAME_PATTERN)
    members: list[Path] = Field(min_length=1)
    ensemble: Path
    student: Path | None = None
    export: bool = True
    data: Path | None = None  # eval data config; default: the first member's
    images: PositiveInt = 205_000  # for the budget projection
    hours: float = Field(9.0, gt=0)
    measure_seconds: float = Field(5.0, gt=0)  # per model, for the ms/image column
    workers: int = Field(2, ge=0)


class SourceCfg(Strict):
    """One dataset for `ens data build`: its layout (`kind`) and where it is."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # prefixes its labels: "<name>:<label>"
    kind: Literal["manifest", "folder", "gldv2", "products10k"]
    csv: Path | None = None  # manifest / gldv2 train.csv / products10k train.csv
    images: Path | None = None  # image root (folder: one sub-folder per label)
    domain: str | None = None  # default: the manifest's domain column, else the source name

    @model_validator(mode="after")
    def _check_paths(self):
        if self.kind in ("manifest", "gldv2", "products10k") and self.csv is None:
            raise ValueError(f"kind {self.kind} needs `csv`")
        if self.kind in ("folder", "gldv2", "products10k") and self.images is None:
            raise ValueError(f"kind {self.kind} needs `images`")
        return self


class BuildCfg(Strict):
    """`ens data build`: merge sources into one label space, balance, write one manifest + summary."""

    out: Path
    sources: list[SourceCfg] = Field(min_length=1)
    balance: SamplerCfg = Field(default_factory=SamplerCfg)
    seed: Seed = 0
