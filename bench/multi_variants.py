"""GUIE-mini variants: each option of the multi-domain work measured on multi, per domain.

    .venv/bin/ens pipeline configs/pipelines/multi_cpu.yaml      # first: the recipes themselves
    .venv/bin/python bench/multi_variants.py [--workdir runs] [--only 'student (EfficientNet-Lite0)' ...]

Every variant is a shipped recipe with one change (its `--set` overrides in VARIANTS), trained or
fitted through the library in the pipeline's workspace (so it reuses the pipeline's members,
ensemble and embedding cache), then scored on configs/data/multi.yaml (query vs the shared index,
flip TTA, the recipe's eval size; a row with the bench-only `eval_px=N` scores the same trained model at
N px instead). Members are scored on their pooled backbone feature (what the
ensemble fuses). The shipped Lite0 student is also reseeded (seeds 1, 2: run-to-run noise) and trained
with an EMA of its weights (optim.ema_decay, seeds 0-2) and for 6 epochs instead of 4 (seeds 0, 1), and the
MobileNet-v1 member with that EMA. WiSE-FT rows (`backbone.wise_ft=W`) of a run already trained in the workspace only
interpolate it (no training), and `eval.gem_p=P` rows take its weights as they are, pooled by GeM
(no training). The HEADS_12 rows train the 12-epoch Lite0 recipe with the margin heads of
GUIE's top solutions (dynamic margin, sub-centres), then pool each by GeM p=6 (and the
sub-centre run once more with another seed, for the run-to-run noise); the sub-centre head is
also trained on the 12-epoch Lite2 recipe (members/cpu/lite2_multi_long.yaml), average-pooled
and pooled by GeM p=3 and 6, WiSE-FT interpolated, and both, and reseeded (seed 3; average-pooled
and GeM p=3); its two seeds are fused by the ensemble recipe (averaged, kept apart, with the
12-epoch Lite0, and with the two sub-centre Lite0 seeds too, pooled by GeM p=3; each seed alone as a
control; the three-member one also at 128/256 dims, with labels only, the neighbour term x3, without the
signed square root, and fitted on the index, transductive), and a
Lite2 student distils the three-member one (2 and 3 epochs from the shipped seed's weights, 2 from
seed 3's; at 260 px, with ArcFace, reseeded, multi-teacher, and with the similarity KL from the
unreduced concatenation). Both sub-centre Lite2 seeds are also WiSE-FT interpolated (0.7, 0.85) and
pooled by GeM p=3. The same Lite2 recipe trains MobileNet-v2 and MobileNet-v1 in Lite2's place (two more
families; average-pooled and GeM p=3), fused with the three into four- and five-member ensembles
(averaged and kept apart; the five also with the hold-out pick, margin 0.35), and a Lite2 student
distils the four-member one and that five-member one.
The leave-domain-out pipeline
(configs/pipelines/multi_lodo_cpu.yaml) runs first (its rows are listed last); its WiSE-FT rows
take mnv1_lodo, mnv2_lodo and lite0_lodo with `backbone.wise_ft` 0.5 and 0.3 (trained with it where the plain
members are not in the workspace, as under --only) and fuse them with its recipe (the 0.3 ones also
without labels: PCA-64, PCA-64 whitened, and the learned projection with its neighbour term only; and,
as diagnostics that are not leave-domain-out, fitted on all six domains' train images: the recipe, PCA-64,
and the recipe with the held-out domains' images unlabelled), and its three members
trained with the backbone frozen (neck and head only: their backbone features are the untrained
backbones') are fused by its recipe, concatenated and reduced by PCA-64 the same way. The main job's
current members are trained without the two domains too (mnv1 at 160 px + WiSE-FT 0.5) and fused, and so
are the three leave-domain-out members retrained with the other retention option, feature_kd 10 and 30,
and those runs with both options (WiSE-FT 0.5 of each feature_kd run, interpolated without training).
Nothing here is fitted on query or index images except the rows labelled transductive.
configs/data/multi_train_balanced.csv (a fit set) is 250 images per domain of multi/train.csv (all
250 of smvs_dvd), drawn with random.seed(0), paths relative to its folder;
configs/data/multi_train_heldout_unlabelled.csv is multi/train.csv with the label of every illustrations
and dishes row left empty (unlabelled rows enter the learned projection's PCA start and neighbour term,
not its label loss).
Writes bench/results/multi_variants.json and the "GUIE-mini variants" table of BENCHMARKS.md; with
--only, just the rows whose step or variant contains one of the texts are run and the others are
kept from that JSON (read again at each save, so concurrent --only invocations keep each other's rows;
but rows of variants that an invocation's own VARIANTS does not list are dropped when it saves, so a
row added to VARIANTS while another invocation runs must be run again after that one ends); --skip
leaves out of those the rows that contain one of its texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from update_benchmarks import domain_table, machine, record  # noqa: E402

from ensemble.commands.pipeline import load_pipeline_cfg, run_pipeline  # noqa: E402
from ensemble.config.load import load_data_cfg, load_member_cfg, load_student_cfg  # noqa: E402
from ensemble.evaluate.run import evaluate  # noqa: E402
from ensemble.fuse.config import ensemble_cfg  # noqa: E402
from ensemble.fuse.fit import fuse_or_reuse  # noqa: E402
from ensemble.train.member import train_member  # noqa: E402
from ensemble.train.student import distill  # noqa: E402
from ensemble.workspace.layout import Workspace  # noqa: E402
from ensemble.workspace.resolve import ResolvedModel, resolve_model  # noqa: E402

DATA = ROOT / "configs" / "data" / "multi.yaml"
MEMBER, ENSEMBLE = "members/cpu/mnv1_multi.yaml", "configs/ensemble/multi_cpu.yaml"
STUDENT = "distill/cpu/lite0_multi_160.yaml"
LODO_ENSEMBLE = "configs/ensemble/multi_lodo_cpu.yaml"
STUDENT_128 = "distill/cpu/lite0_multi.yaml"  # the previous student recipe: 128 px, backbone lr x0.1, no sim_kl
# the ensemble recipe before the signed square root and the retuned projection (lr 3e-4, teacher tau 0.05)
PREVIOUS = ["power=1", "learned.lr=1e-3", "learned.neighbour_tau_teacher=0.02"]
STAGES_12 = "stages=[{train: [neck, head], epochs: 1}, {train: [all], epochs: 12}]"
FT_STAGES = "stages=[{train: [neck, head], epochs: 1}, {train: [all], epochs: 2, lr: 3.0e-4}]"  # from a trained run
WISE_12 = (0.5, 0.7, 0.85)  # WiSE-FT weights swept on the 12-epoch Lite0 member
WISE_LITE2 = (0.7, 0.85)  # and on the 6- and 12-epoch Lite2 members
TWO_BEST = "lite2_multi,lite0_multi_long_12ep"  # the strongest Lite2 and Lite0 members
LITE2_WEIGHTS = ROOT.parent / "shared" / "weights" / "tf_efficientnet_lite2.mli_in1k.safetensors"
TWO_BEST_12 = "lite2_multi_12ep,lite0_multi_long_12ep"  # the same with the 12-epoch Lite2 member
GEM_P = (3.0, 6.0)  # GeM exponents tried at eval on the 12-epoch members (eval.gem_p)
# the 12-epoch Lite2 recipe with sub-centres, pooled by GeM p=3: its rows set eval.gem_p (null: average-pooled)
LITE2_LONG = "members/cpu/lite2_multi_long.yaml"
LITE2_LONG_MS = "members/cpu/lite2_multi_long_ms.yaml"
SUBCENTRES, SUBCENTRES_SET = "sub-center ArcFace, 3 centres per class (GUIE 3rd, 4th, 6th place)", "head.subcenters=3"
# margin heads of the GUIE top solutions (DOMAIN.md), each on the 12-epoch Lite0 recipe: (variant, --set, name suffix)
HEADS_12 = (
    ("dynamic margin 0.1 + 0.1 per epoch up to 0.8 (GUIE 2nd place)",
     "head.margin_schedule={start: 0.1, step: 0.1, max: 0.8}", "dynmargin"),
    (SUBCENTRES, SUBCENTRES_SET, "sub3"),
)
TWO_GEM = "lite2_multi_12ep_evalgem3,lite0_multi_long_12ep_evalgem3"  # those two pooled by GeM p=3
# the two seeds (2, 3) of the shipped sub-centre Lite2 recipe, pooled by GeM p=3 as shipped; one architecture, so
# `ens fuse` averages them (merge: mean) unless merge: concat keeps one group per member
LITE2_SEEDS = "lite2_multi_12ep_sub3_evalgem3,lite2_multi_12ep_sub3_seed3_evalgem3"
SEEDS_STEP = "ensemble (two seeds of the sub-centre Lite2 recipe, GeM p=3)"
SEEDS_LITE0 = f"{LITE2_SEEDS},lite0_multi_long_12ep_evalgem3"  # and the 12-epoch Lite0 pooled by GeM p=3
# the two seeds of the 12-epoch sub-centre Lite0 run pooled by GeM p=3: (variant text, --set, member name)
LITE0_SUB3_GEM3 = (("", [], "lite0_multi_long_12ep_sub3_evalgem3"),
                   (", reseeded (seed 3)", ["seed=3"], "lite0_multi_long_12ep_sub3_seed3_evalgem3"))
# the 0.680 Lite2 member (seed 3, GeM p=3) + the 12-epoch Lite0 (GeM p=3): the strongest two-member pair
SEED3_LITE0 = "lite2_multi_12ep_sub3_seed3_evalgem3,lite0_multi_long_12ep_evalgem3"
SEED3_STEP = "ensemble (the 0.680 Lite2 member, seed 3, + Lite0 12 epochs, both pooled by GeM p=3)"
# the shipped sub-centre Lite2 recipe with MobileNet-v2 (its coral weights need relu6 and TF "same" padding) in
# Lite2's place: a strong member of a second family for the ensemble (seed, sizes, stages and head unchanged)
MNV2_IN_LITE2 = ["backbone.arch=mobilenetv2_100",
                 "backbone.pretrained=../../../shared/weights/mobilenetv2_100.coral_in1k.safetensors",
                 "backbone.model_kwargs={act_layer: relu6, pad_type: same}"]
MNV2_LONG_STEP = "member (MobileNet-v2, the sub-centre Lite2 recipe)"
SEEDS_LITE0_MNV2 = f"{SEEDS_LITE0},mnv2_multi_12ep_sub3_evalgem3"  # + that MobileNet-v2 pooled by GeM p=3
MNV1_IN_LITE2 = ["backbone.arch=mobilenetv1_100",  # the same for MobileNet-v1: a third family
                 "backbone.pretrained=../../../shared/weights/mobilenetv1_100.coral_in1k.safetensors",
                 "backbone.model_kwargs={act_layer: relu6, pad_type: same}"]
MNV1_LONG_STEP = "member (MobileNet-v1, the sub-centre Lite2 recipe)"
ALL_FOUR_FAMILIES = f"{SEEDS_LITE0_MNV2},mnv1_multi_12ep_sub3_evalgem3"  # + that MobileNet-v1 pooled by GeM p=3
FIVE_STEP = "ensemble (two Lite2 seeds + Lite0 + MobileNet-v2 + MobileNet-v1, all 12 epochs, all GeM p=3)"
EVAL_PX = "eval_px="  # a bench-only override: score the trained model at another size (no retraining)


def variant_name(recipe: str, overrides: list[str]) -> str:
    """A `name=` override, else the shipped name for the recipe itself, else stem + a suffix from the overrides."""
    stem = Path(recipe).stem
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("name=")]
    if named:
        return named[-1]
    if not overrides:
        return stem
    def short(override: str) -> str:  # "a.b.key=value" -> "key-value" (a path value -> its file stem)
        key, value = override.split("=", 1)
        return key.split(".")[-1] + "-" + (Path(value).stem if "/" in value else value)

    suffix = "_".join(short(o) for o in overrides)
    return re.sub(r"[^A-Za-z0-9_.-]", "", f"{stem}__{suffix}".replace("null", "none"))


def pair_rows(step: str, members: str, name: str, fused: str = "the two, signed sqrt concatenation (2,560-d)",
              reduced: str = "the two, signed sqrt, PCA-64 fitted on train",
              extra: tuple[str, ...] = ()) -> list[tuple[str, str, str, list[str]]]:
    """The ensemble recipe, its fused features without projection and PCA-64 (`fused`, `reduced`: their variant
    texts) on members "a,b,..."; `extra` overrides (e.g. merge=concat) go to all three."""
    sets, said = [f"members=[{members}]", *extra], "".join(f", {o.replace('=', ': ')}" for o in extra)
    return [(step, f"the recipe on {' and '.join(members.split(','))}{said}", ENSEMBLE, [*sets, f"name={name}"]),
            (step, fused, ENSEMBLE, [*sets, "projection=pca", "pca=null", f"name={name}_concat"]),
            (step, reduced, ENSEMBLE, [*sets, "projection=pca", f"name={name}_pca"])]


def lite2_student(teacher: str, init_from: str, name: str, epochs: int = 2, train_px: int = 224) -> list[str]:
    """The student recipe moved to Lite2 (`train_px`, eval 260 px, `epochs` instead of 4), distilled from `teacher`."""
    return [f"teacher={teacher}", f"stages=[{{train: [all], epochs: {epochs}}}]", "backbone.arch=tf_efficientnet_lite2",
            f"backbone.pretrained={LITE2_WEIGHTS}", f"backbone.init_from={init_from}",
            f"backbone.image_size={train_px}", "eval.image_size=260", f"name={name}"]


def lodo_rows(step: str, said: str, sets: list[str], suffix: str,
              reducers: tuple[tuple[str, list[str], str], ...] = ()) -> list[tuple[str, str, str, list[str]]]:
    """The three leave-domain-out members changed by `sets` ("{f}" in them: the family, mnv1/mnv2/lite0; `said`:
    that change in the variant text), the leave-domain-out ensemble recipe on them (named multi_lodo`suffix`),
    and that recipe changed by each of `reducers` (variant text, overrides of the ensemble recipe, name suffix)."""
    rows = [(step, f"{f}_lodo{said}", f"members/cpu/{f}_lodo.yaml",
             [o.replace("{f}", f) for o in sets]) for f in ("mnv1", "mnv2", "lite0")]
    members = ",".join(variant_name(recipe, sets) for _, _, recipe, sets in rows)
    return [*rows, (step, "ensemble of the three (multi_lodo_cpu recipe)", LODO_ENSEMBLE,
                    [f"members=[{members}]", f"name=multi_lodo{suffix}"]),
            *[(step, text, LODO_ENSEMBLE, [f"members=[{members}]", *sets, f"name=multi_lodo{suffix}_{tag}"])
              for text, sets, tag in reducers]]


def lodo_wise_rows(weight: float, reducers: tuple[tuple[str, list[str], str], ...] = ()
                   ) -> list[tuple[str, str, str, list[str]]]:
    """The leave-domain-out members retrained (or, where trained, interpolated) with WiSE-FT `weight`, fused
    (`lodo_rows`)."""
    suffix = "_wise" if weight == 0.5 else f"_wise_{weight}"  # 0.5: named before the weight was
    return lodo_rows(f"leave-domain-out (no illustrations, dishes), WiSE-FT {weight} members", f" + WiSE-FT {weight}",
                     [f"backbone.wise_ft={weight}"], suffix, reducers)


def lodo_current_rows() -> list[tuple[str, str, str, list[str]]]:
    """Leave-domain-out with the main job's members since 2026-12-05, as configs/pipelines/multi_lodo_cpu.yaml ships
    them: mnv1_lodo_160_wise (mnv1_multi_160_wise's twin), mnv2_lodo and lite0_lodo, fused by the same recipe, and
    the main job's student recipe distilled from that ensemble without the two domains (lite0_lodo_160_soup)."""
    step = "leave-domain-out (no illustrations, dishes), the main job's current members"
    return [(step, "mnv1_lodo at 160 px + WiSE-FT 0.5 (mnv1_multi_160_wise's twin)",
             "members/cpu/mnv1_lodo_160_wise.yaml", []),
            (step, "mnv2_lodo (as the leave-domain-out pipeline trains it)", "members/cpu/mnv2_lodo.yaml", []),
            (step, "lite0_lodo (as the leave-domain-out pipeline trains it)", "members/cpu/lite0_lodo.yaml", []),
            (step, "ensemble of the three (multi_lodo_cpu recipe)", LODO_ENSEMBLE, ["name=multi_lodo_mnv1_160_wise"]),
            (step, "student: the main job's recipe (lite0_multi_160_soup) distilled from that ensemble on the four "
             "domains' train images, started from lite0_lodo", "distill/cpu/lite0_lodo_160_soup.yaml",
             ["teacher=multi_lodo_mnv1_160_wise", "name=lite0_lodo_160_soup"])]


def lodo_gem_rows() -> list[tuple[str, str, str, list[str]]]:
    """The current leave-domain-out members (lodo_current_rows) as trained, pooled by GeM p=3 where they embed
    (eval.gem_p: no training; GeM raised illustrations in every family untrained and in the main job's members),
    and the multi_lodo_cpu recipe fitted on them."""
    step = "leave-domain-out (no illustrations, dishes), the main job's current members pooled by GeM p=3"
    rows = [gem_row(step, name) for name in ("mnv1_lodo_160_wise", "mnv2_lodo", "lite0_lodo")]
    members = ",".join(variant_name(recipe, sets) for _, _, recipe, sets in rows)
    return [*rows, (step, "ensemble of the three (multi_lodo_cpu recipe)", LODO_ENSEMBLE,
                    [f"members=[{members}]", "name=multi_lodo_current_gem3"])]


def gem_row(step: str, name: str) -> tuple[str, str, str, list[str]]:
    """The shipped member recipe `name` as trained, pooled by GeM p=3 where it embeds (eval.gem_p, no training)."""
    return (step, f"{name}, pooled by GeM p=3 where it embeds (eval.gem_p: the same weights, no training)",
            f"members/cpu/{name}.yaml", ["eval.gem_p=3", f"name={name}_evalgem3"])


MS_SIZES = "eval.extra_sizes=[128,192]"  # around the main job's 160 px eval size (multi-scale TTA)
MAIN_JOB_MEMBERS = (("member (MobileNet-v1)", "mnv1_multi_160_wise"), ("member (MobileNet-v2)", "mnv2_multi"),
                    ("member (EfficientNet-Lite0)", "lite0_multi"))  # configs/pipelines/multi_cpu.yaml's


def multi_scale_row(step: str, name: str) -> tuple[str, str, str, list[str]]:
    """The main job's member recipe `name` as trained, also embedded at 128 and 192 px around its 160 px eval size
    (eval.extra_sizes: multi-scale TTA, the same weights, no training)."""
    return (step, f"{name} (the main job's member), embedded at 128 + 160 + 192 px (eval.extra_sizes [128, 192]: "
            "multi-scale TTA, the same weights, no training)", f"members/cpu/{name}.yaml",
            [MS_SIZES, f"name={name}_ms"])


SOUP_STUDENT = "distill/cpu/lite0_multi_160_soup.yaml"  # the main job's student recipe
MS_MEMBERS = f"members=[{','.join(f'{name}_ms' for _, name in MAIN_JOB_MEMBERS)}]"  # multi_scale_row's copies


def main_job_multi_scale_rows() -> list[tuple[str, str, str, list[str]]]:
    """The main job's ensemble and student with every model embedded at 128 + 160 + 192 px: the ensemble recipe
    on the members' multi-scale copies (multi_scale_row, no training), the job's student embedded the same way
    (no training), and the student recipe distilled from that multi-scale ensemble, at 160 px and at three sizes."""
    ms = "embedded at 128 + 160 + 192 px (multi-scale TTA"
    return [
        ("ensemble (3 members)", f"the recipe on the main job's three members {ms}: their _ms copies, the same "
         "weights); fused features of the train images at three sizes", ENSEMBLE,
         [MS_MEMBERS, "name=multi_cpu_ms"]),
        *[("ensemble (3 members)", f"{said} of the main job's three members {ms}: their _ms copies)", ENSEMBLE,
           [MS_MEMBERS, *sets, f"name=multi_cpu_ms_{tag}"])
          for said, sets, tag in (("signed sqrt concatenation (3,584-d)", ["projection=pca", "pca=null"], "concat"),
                                  ("signed sqrt + PCA-64 fitted on train", ["projection=pca"], "pca"))],
        ("student (EfficientNet-Lite0)", f"the main job's student (lite0_multi_160_soup, distilled from multi_cpu) "
         f"{ms}, the same weights, no training)", SOUP_STUDENT, [MS_SIZES, "name=lite0_multi_160_soup_ms"]),
        ("student (EfficientNet-Lite0)", "the main job's student recipe (a soup of seeds 0 + 1) distilled from the "
         f"ensemble {ms}, multi_cpu_ms), embedded at 160 px", SOUP_STUDENT,
         ["teacher=multi_cpu_ms", "name=lite0_multi_160_soup_of_ms"]),
        ("student (EfficientNet-Lite0)", f"that student {ms}, the same weights, no training)", SOUP_STUDENT,
         ["teacher=multi_cpu_ms", MS_SIZES, "name=lite0_multi_160_soup_of_ms_ms"]),
    ]


SIX_TRAIN = load_data_cfg(str(DATA)).train  # multi's train images, all six domains (its data config's)
DIAGNOSTIC = "NOT leave-domain-out (diagnostic):"
LODO_REDUCERS = (  # the leave-domain-out ensemble recipe changed (all for WiSE-FT 0.3, two for head-only)
    ("the three, signed sqrt concatenation (no 64-d projection)", ["projection=pca", "pca=null"], "concat"),
    *[(f"the same ensemble, neighbour term x{w:g}", [f"learned.neighbour_weight={w}"], f"nb{w:g}")
      for w in (3.0, 10.0)],
    # 64-d reductions without labels
    ("the same members, signed sqrt + PCA-64 fitted on train", ["projection=pca"], "pca"),
    ("the same members, learned-64 with the neighbour term only (learned.label_weight 0: no labels)",
     ["learned.label_weight=0"], "nbonly"),
    ("the same members, signed sqrt + PCA-64 whitened, fitted on train", ["projection=pca", "whiten=true"], "pcaw"),
    # NOT leave-domain-out: the 64-d fit sees the held-out domains' train images, to tell what loses them
    (f"{DIAGNOSTIC} the recipe fitted on all six domains' train images and labels", [f"fit_on={SIX_TRAIN}"], "six"),
    (f"{DIAGNOSTIC} signed sqrt + PCA-64 fitted on all six domains' train images",
     ["projection=pca", f"fit_on={SIX_TRAIN}"], "six_pca"),
    (f"{DIAGNOSTIC} the recipe fitted on the four domains' labels + the held-out domains' train images unlabelled",
     [f"fit_on={ROOT / 'configs' / 'data' / 'multi_train_heldout_unlabelled.csv'}"], "semi"),
)
# the leave-domain-out members with the backbone frozen (only neck and head train, backbone in eval mode): their
# backbone features are the untrained ImageNet backbones', so their ensembles show what fitting the 64-d reduction
# on four domains costs the two held-out ones without any fine-tuning
HEAD_ONLY = ["stages=[{train: [neck, head], epochs: 1}]", "name={f}_lodo_headonly"]
HEAD_ONLY_REDUCERS = tuple(r for r in LODO_REDUCERS if r[2] in ("concat", "pca"))
# MobileNet-v1 trained at the eval size + WiSE-FT 0.5: the one mnv1 variant that keeps every domain
MNV1_160_WISE = ["backbone.image_size=160", "backbone.wise_ft=0.5"]

SOUPS = (  # student soups (soup_seeds: the mean of the seeds' runs' weights): (said, overrides, name stem, seeds)
    *[("recipe", [], "lite0_multi_160", seeds) for seeds in ((0, 1), (0, 2), (1, 2), (0, 1, 2))],
    ("recipe + EMA 0.998", ["optim.ema_decay=0.998"], "lite0_multi_160_ema", (0, 1, 2)),
    ("recipe, 6 epochs", ["stages=[{train: [all], epochs: 6}]"], "lite0_multi_160_6ep", (0, 1)),
    ("recipe, 3 epochs", ["stages=[{train: [all], epochs: 3}]"], "lite0_multi_160_3ep", (0, 1)),
)


def soup_row(said: str, sets: list[str], stem: str, seeds: tuple[int, ...]) -> tuple[str, str, str, list[str]]:
    """The student recipe changed by `sets`, as the soup of its runs with `seeds` (each run above reused
    where its rows trained it: the same recipe key under another name is derived without training)."""
    tag = "".join(map(str, seeds))
    return ("student (EfficientNet-Lite0)", f"{said}, a soup of seeds {'+'.join(map(str, seeds))} (the mean of "
            "the runs' weights)", STUDENT,
            [*sets, f"seed={seeds[0]}", f"soup_seeds={list(seeds[1:])}", f"name={stem}_soup{tag}"])


VARIANTS = [  # (step, variant, recipe, overrides); the first of each step is the shipped recipe; cheap ones first
    ("ensemble (3 members)", "recipe: signed sqrt, learned-64 (train labels + neighbour term), fitted on train",
     ENSEMBLE, []),
    ("ensemble (3 members)", "plain concatenation (3,584-d)", ENSEMBLE, ["projection=pca", "pca=null", "power=1"]),
    ("ensemble (3 members)", "signed sqrt, concatenation (3,584-d)", ENSEMBLE, ["projection=pca", "pca=null"]),
    ("ensemble (3 members)", "learned-64 without signed sqrt, lr 1e-3, teacher tau 0.02 (the previous recipe)",
     ENSEMBLE, [*PREVIOUS]),
    ("ensemble (3 members)", "PCA-64 fitted on train (the first recipe)", ENSEMBLE, ["projection=pca", "power=1"]),
    ("ensemble (3 members)", "signed sqrt, PCA-64 fitted on train", ENSEMBLE, ["projection=pca"]),
    ("ensemble (3 members)", "previous recipe, train labels only (no neighbour term)", ENSEMBLE,
     [*PREVIOUS, "learned.neighbour_weight=0"]),
    ("ensemble (3 members)", "previous recipe, neighbour term x3", ENSEMBLE, [*PREVIOUS, "learned.neighbour_weight=3"]),
    ("ensemble (3 members)", "PCA-64 fitted on index (transductive)", ENSEMBLE,
     ["projection=pca", "fit_on=index", "power=1"]),
    ("ensemble (3 members)", "PCA-64 whitened, fitted on train", ENSEMBLE,
     ["projection=pca", "whiten=true", "power=1"]),
    ("ensemble (3 members)", "learned-64, labels only, 60 epochs at lr 3e-3", ENSEMBLE,
     ["power=1", "learned.neighbour_weight=0", "learned.epochs=60", "learned.lr=3e-3"]),
    ("ensemble (1 member)", "lite0_multi alone, PCA-64 fitted on train", ENSEMBLE,
     ["projection=pca", "members=[lite0_multi]", "power=1"]),
    ("ensemble (1 member)", "lite0_multi alone, the recipe's signed sqrt + learned-64", ENSEMBLE,
     ["members=[lite0_multi]"]),
    ("ensemble (3 members)", "PCA-64 fitted on 250 train images per domain", ENSEMBLE,
     ["projection=pca", f"fit_on={ROOT / 'configs' / 'data' / 'multi_train_balanced.csv'}", "power=1"]),
    ("student (EfficientNet-Lite0)", "recipe: fused 64-d target, train images, from lite0_multi; 160 px, "
     "backbone lr x0.3, sim_kl 1", STUDENT, []),
    *[("student (EfficientNet-Lite0)", f"recipe reseeded (seed {seed} instead of 0: batch order and augmentation, "
       "run-to-run noise)", STUDENT, [f"seed={seed}", f"name=lite0_multi_160_s{seed}"]) for seed in (1, 2)],
    *[("student (EfficientNet-Lite0)", f"recipe + EMA of the weights (optim.ema_decay 0.998), seed {seed}", STUDENT,
       [f"seed={seed}", "optim.ema_decay=0.998", f"name=lite0_multi_160_ema_s{seed}"]) for seed in (0, 1, 2)],
    *[("student (EfficientNet-Lite0)", f"recipe, 6 epochs instead of 4, seed {seed}", STUDENT,
       [f"seed={seed}", "stages=[{train: [all], epochs: 6}]", f"name=lite0_multi_160_6ep_s{seed}"]) for seed in (0, 1)],
    *[("student (EfficientNet-Lite0)", f"recipe, 3 epochs instead of 4, seed {seed}", STUDENT,
       [f"seed={seed}", "stages=[{train: [all], epochs: 3}]", f"name=lite0_multi_160_3ep_s{seed}"]) for seed in (0, 1)],
    *[soup_row(*soup) for soup in SOUPS],
    ("student (EfficientNet-Lite0)", "previous recipe: 128 px, backbone lr x0.1, no sim_kl", STUDENT_128, []),
    ("student (EfficientNet-Lite0)", "previous + batch similarity KL (sim_kl 1, temperature 0.05)", STUDENT_128,
     ["loss.sim_kl=1.0"]),
    ("student (EfficientNet-Lite0)", "previous, distilled at 160 px (the eval size)", STUDENT_128,
     ["backbone.image_size=160"]),
    ("student (EfficientNet-Lite0)", "previous, backbone lr x0.3", STUDENT_128, ["optim.backbone_lr_scale=0.3"]),
    ("student (EfficientNet-Lite0)", "previous + ArcFace on the train labels (weight 0.5)", STUDENT_128,
     ["loss.arcface=0.5"]),
    ("student (MobileNet-v1)", "MobileNet-v1 from mnv1_multi, 2 epochs (the previous recipe)",
     "distill/cpu/mnv1_multi.yaml", []),
    ("student (MobileNet-v1)", "multi-teacher: + one projector per member", "distill/cpu/mnv1_multi.yaml",
     ["loss.members=1.0"]),
    ("member (MobileNet-v1)", "recipe: size^0.5 domain shares, one head", MEMBER, []),
    # after the member row above, which trains mnv1_multi (no longer a pipeline member)
    ("ensemble (3 members)", "the recipe with mnv1_multi (128 px, no WiSE-FT: the members before 2026-12-05) in "
     "mnv1_multi_160_wise's place", ENSEMBLE,
     ["members=[mnv1_multi,mnv2_multi,lite0_multi]", "name=multi_cpu_mnv1_multi"]),
    ("member (MobileNet-v1)", "class-balanced only (no domain shares)", MEMBER, ["sampler.domain_alpha=null"]),
    ("member (MobileNet-v1)", "one softmax per domain", MEMBER, ["head.per_domain=true"]),
    ("member (MobileNet-v1)", "retention: feature_kd 10", MEMBER, ["backbone.feature_kd=10"]),
    ("member (MobileNet-v1)", "retention: WiSE-FT 0.5", MEMBER, ["backbone.wise_ft=0.5"]),
    ("member (MobileNet-v1)", "retention: WiSE-FT 0.3", MEMBER, ["backbone.wise_ft=0.3"]),
    ("member (MobileNet-v1)", "trained at 160 px (the eval size) instead of 128", MEMBER, ["backbone.image_size=160"]),
    ("member (MobileNet-v1)", "trained at 160 px + WiSE-FT 0.7", MEMBER,
     ["backbone.image_size=160", "backbone.wise_ft=0.7"]),
    ("member (MobileNet-v1)", "trained at 160 px + WiSE-FT 0.5", MEMBER, MNV1_160_WISE),
    # after the member row above, which trains this MobileNet-v1 (the shipped mnv1_multi_160_wise's twin)
    ("ensemble (3 members)", "the recipe with mnv1 trained at 160 px + WiSE-FT 0.5 (every domain kept) in "
     "mnv1_multi's place", ENSEMBLE,
     [f"members=[{variant_name(MEMBER, MNV1_160_WISE)},mnv2_multi,lite0_multi]", "name=multi_cpu_mnv1_160_wise"]),
    ("member (MobileNet-v1)", "recipe + EMA of the weights (optim.ema_decay 0.998)", MEMBER,
     ["optim.ema_decay=0.998", "name=mnv1_multi_ema"]),
    *[("member (MobileNet-v1)", f"retention: backbone lr x{scale} of the head's instead of x0.1", MEMBER,
       [f"optim.backbone_lr_scale={scale}", f"name=mnv1_multi_blr{scale}"]) for scale in (0.05, 0.03)],
    gem_row("member (MobileNet-v1)", "mnv1_multi"), gem_row("member (MobileNet-v2)", "mnv2_multi"),
    ("member (EfficientNet-Lite0)", "recipe (lite0_multi): 128 px, 1 epoch head + 2 epochs all",
     "members/cpu/lite0_multi.yaml", []),
    gem_row("member (EfficientNet-Lite0)", "lite0_multi"),
    ("member (EfficientNet-Lite0)", "longer (lite0_multi_long): 160 px, 1 epoch head + 6 epochs all",
     "members/cpu/lite0_multi_long.yaml", []),
    ("member (EfficientNet-Lite0)", "longer still: 160 px, 1 epoch head + 12 epochs all",
     "members/cpu/lite0_multi_long.yaml",
     [STAGES_12, "name=lite0_multi_long_12ep"]),
    *[("member (EfficientNet-Lite0)", f"longer still + WiSE-FT {w} (the 12-epoch run interpolated with its "
       "pretrained backbone; no training)", "members/cpu/lite0_multi_long.yaml",
       [STAGES_12, f"backbone.wise_ft={w}", f"name=lite0_multi_long_12ep_wise{w}"]) for w in WISE_12],
    *[("member (EfficientNet-Lite0)", f"longer still, pooled by GeM p={p:g} where it embeds (eval.gem_p: the same "
       "weights, no training)", "members/cpu/lite0_multi_long.yaml",
       [STAGES_12, f"eval.gem_p={p}", f"name=lite0_multi_long_12ep_evalgem{p:g}"]) for p in GEM_P],
    *[("member (EfficientNet-Lite0)", f"longer still + {text}", "members/cpu/lite0_multi_long.yaml",
       [STAGES_12, override, f"name=lite0_multi_long_12ep_{suffix}"]) for text, override, suffix in HEADS_12],
    *[("member (EfficientNet-Lite0)", f"longer still + {text}, pooled by GeM p=6 where it embeds (no training)",
       "members/cpu/lite0_multi_long.yaml", [STAGES_12, override, "eval.gem_p=6",
                                             f"name=lite0_multi_long_12ep_{suffix}_evalgem6"])
      for text, override, suffix in HEADS_12],
    ("member (EfficientNet-Lite0)", "longer still + sub-center ArcFace, reseeded (seed 3 instead of 2: run-to-run "
     "noise)", "members/cpu/lite0_multi_long.yaml",
     [STAGES_12, SUBCENTRES_SET, "seed=3", "name=lite0_multi_long_12ep_sub3_seed3"]),
    *[("member (EfficientNet-Lite0)", f"longer still + sub-center ArcFace{said}, pooled by GeM p=3 where it embeds "
       "(no training; the Lite2 rows' exponent)", "members/cpu/lite0_multi_long.yaml",
       [STAGES_12, SUBCENTRES_SET, *sets, "eval.gem_p=3", f"name={name}"]) for said, sets, name in LITE0_SUB3_GEM3],
    ("member (EfficientNet-Lite2)", "lite2_multi: the lite0_multi_long recipe on Lite2, 224 px, eval 260 px",
     "members/cpu/lite2_multi.yaml", []),
    *[("member (EfficientNet-Lite2)", f"lite2_multi + WiSE-FT {w} (interpolated, no training)",
       "members/cpu/lite2_multi.yaml", [f"backbone.wise_ft={w}", f"name=lite2_multi_wise{w}"]) for w in WISE_LITE2],
    ("member (EfficientNet-Lite2)", "lite2_multi evaluated at 300 px (same model, no training)",
     "members/cpu/lite2_multi.yaml", [f"{EVAL_PX}300"]),
    ("member (EfficientNet-Lite2)", "lite2_multi longer: 224 px, 1 epoch head + 12 epochs all",
     "members/cpu/lite2_multi.yaml", [STAGES_12, "name=lite2_multi_12ep"]),
    *[("member (EfficientNet-Lite2)", f"lite2_multi longer + WiSE-FT {w} (the 12-epoch run interpolated, no training)",
       "members/cpu/lite2_multi.yaml", [STAGES_12, f"backbone.wise_ft={w}", f"name=lite2_multi_12ep_wise{w}"])
      for w in WISE_LITE2],
    ("member (EfficientNet-Lite2)", "lite2_multi longer, then fine-tuned at the 260 px eval size: from that "
     "run, 1 epoch head + 2 epochs all at lr 3e-4", "members/cpu/lite2_multi.yaml",
     ["backbone.init_from=lite2_multi_12ep", "backbone.image_size=260", "name=lite2_multi_12ep_ft260",
      FT_STAGES]),
    ("member (EfficientNet-Lite2)", "lite2_multi longer, then fine-tuned with GeM p=3 pooling: from that run, "
     "1 epoch head + 2 epochs all at lr 3e-4", "members/cpu/lite2_multi.yaml",
     ["backbone.init_from=lite2_multi_12ep", "backbone.gem_p=3", "name=lite2_multi_12ep_gem3", FT_STAGES]),
    *[("member (EfficientNet-Lite2)", f"lite2_multi longer, pooled by GeM p={p:g} where it embeds (eval.gem_p: "
       "the same weights, no training)", "members/cpu/lite2_multi.yaml",
       [STAGES_12, f"eval.gem_p={p}", f"name=lite2_multi_12ep_evalgem{p:g}"]) for p in GEM_P],
    ("member (EfficientNet-Lite2)", "lite2_multi longer + WiSE-FT 0.85, pooled by GeM p=3 where it embeds (the "
     "12-epoch run interpolated, no training)", "members/cpu/lite2_multi.yaml",
     [STAGES_12, "backbone.wise_ft=0.85", "eval.gem_p=3", "name=lite2_multi_12ep_wise0.85_evalgem3"]),
    ("member (EfficientNet-Lite2)", f"lite2_multi longer + {SUBCENTRES}", LITE2_LONG,
     ["eval.gem_p=null", "name=lite2_multi_12ep_sub3"]),
    *[("member (EfficientNet-Lite2)", f"lite2_multi longer + {SUBCENTRES}, pooled by GeM p={p:g} where it embeds "
       "(no training)", LITE2_LONG, [f"eval.gem_p={p}", f"name=lite2_multi_12ep_sub3_evalgem{p:g}"]) for p in GEM_P],
    *[("member (EfficientNet-Lite2)", f"lite2_multi longer + sub-center ArcFace + WiSE-FT {w} (that run "
       "interpolated, no training)", LITE2_LONG,
       [f"backbone.wise_ft={w}", "eval.gem_p=null", f"name=lite2_multi_12ep_sub3_wise{w}"]) for w in WISE_LITE2],
    *[("member (EfficientNet-Lite2)", f"lite2_multi longer + sub-center ArcFace{said} + WiSE-FT {w}, pooled by GeM "
       "p=3 where it embeds (that run interpolated, no training)", LITE2_LONG,
       [*sets, f"backbone.wise_ft={w}", f"name=lite2_multi_12ep_sub3{suffix}_wise{w}_evalgem3"])
      for said, sets, suffix in (("", [], ""), (", reseeded (seed 3)", ["seed=3"], "_seed3")) for w in WISE_LITE2],
    ("member (EfficientNet-Lite2)", f"lite2_multi longer + {SUBCENTRES}, reseeded (seed 3 instead of 2: "
     "run-to-run noise)", LITE2_LONG, ["seed=3", "eval.gem_p=null", "name=lite2_multi_12ep_sub3_seed3"]),
    ("member (EfficientNet-Lite2)", "lite2_multi longer + sub-center ArcFace, reseeded, pooled by GeM p=3 where it "
     "embeds (no training): the shipped lite2_multi_long recipe at seed 3", LITE2_LONG,
     ["seed=3", "name=lite2_multi_12ep_sub3_seed3_evalgem3"]),
    ("member (EfficientNet-Lite2)", "lite2_multi longer + sub-center ArcFace, a third seed, pooled by GeM p=3 where "
     "it embeds: the shipped lite2_multi_long recipe at seed 4", LITE2_LONG,
     ["seed=4", "name=lite2_multi_12ep_sub3_seed4_evalgem3"]),
    ("member (EfficientNet-Lite2)", "lite2_multi longer + sub-center ArcFace, a fourth seed, pooled by GeM p=3 where "
     "it embeds: the shipped lite2_multi_long recipe at seed 5", LITE2_LONG,
     ["seed=5", "name=lite2_multi_12ep_sub3_seed5_evalgem3"]),
    ("member (EfficientNet-Lite2)", "the shipped lite2_multi_long_ms recipe at seed 4: lite2_multi_long's weights "
     "embedded at 224, 260 and 300 px (multi-scale TTA, eval.extra_sizes [224, 300]; no training)", LITE2_LONG_MS,
     ["seed=4", "name=lite2_multi_12ep_sub3_seed4_evalgem3_ms"]),
    ("member (EfficientNet-Lite2)", "the shipped lite2_multi_long_ms recipe at seed 6, trained after its sizes were "
     "chosen (an independent check of that choice): 224, 260 and 300 px", LITE2_LONG_MS,
     ["seed=6", "name=lite2_multi_12ep_sub3_seed6_evalgem3_ms"]),
    *[multi_scale_row(step, name) for step, name in MAIN_JOB_MEMBERS],
    *main_job_multi_scale_rows(),
    (MNV2_LONG_STEP, "lite2_multi_long with MobileNet-v2 in Lite2's place: 224 px, 1 epoch head + 12 epochs all, "
     "eval 260 px, average-pooled", LITE2_LONG, [*MNV2_IN_LITE2, "eval.gem_p=null", "name=mnv2_multi_12ep_sub3"]),
    (MNV2_LONG_STEP, "the same weights pooled by GeM p=3 where it embeds, as the recipe ships (no training)",
     LITE2_LONG, [*MNV2_IN_LITE2, "name=mnv2_multi_12ep_sub3_evalgem3"]),
    (MNV1_LONG_STEP, "lite2_multi_long with MobileNet-v1 in Lite2's place: 224 px, 1 epoch head + 12 epochs all, "
     "eval 260 px, average-pooled", LITE2_LONG, [*MNV1_IN_LITE2, "eval.gem_p=null", "name=mnv1_multi_12ep_sub3"]),
    (MNV1_LONG_STEP, "the same weights pooled by GeM p=3 where it embeds, as the recipe ships (no training)",
     LITE2_LONG, [*MNV1_IN_LITE2, "name=mnv1_multi_12ep_sub3_evalgem3"]),
    ("ensemble (lite0_multi_long in place of lite0_multi)", "the recipe, members mnv1_multi, mnv2_multi, "
     "lite0_multi_long", ENSEMBLE, ["members=[mnv1_multi,mnv2_multi,lite0_multi_long]", "name=multi_cpu_long"]),
    *pair_rows("ensemble (Lite2 + Lite0, the two strongest members)", TWO_BEST, "multi_lite2"),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "the recipe with the neighbour term x3",
     ENSEMBLE, [f"members=[{TWO_BEST}]", "learned.neighbour_weight=3", "name=multi_lite2_nb3"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "the recipe with 5 projection epochs instead of 20",
     ENSEMBLE, [f"members=[{TWO_BEST}]", "learned.epochs=5", "name=multi_lite2_ep5"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "control: lite2_multi alone, the recipe's signed sqrt "
     "+ learned-64", ENSEMBLE, ["members=[lite2_multi]", "name=multi_lite2_alone"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "the recipe fitted on 250 train images per domain",
     ENSEMBLE, [f"members=[{TWO_BEST}]", f"fit_on={ROOT / 'configs' / 'data' / 'multi_train_balanced.csv'}",
                "name=multi_lite2_balanced"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "the two, signed sqrt, PCA-64 fitted on index "
     "(transductive)", ENSEMBLE,
     [f"members=[{TWO_BEST}]", "projection=pca", "fit_on=index", "name=multi_lite2_pca_index"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "neighbour term only (no label loss)",
     ENSEMBLE, [f"members=[{TWO_BEST}]", "learned.label_weight=0", "name=multi_lite2_nbonly"]),
    ("ensemble (Lite2 + Lite0, the two strongest members)", "neighbour term only, teacher tau 0.02",
     ENSEMBLE, [f"members=[{TWO_BEST}]", "learned.label_weight=0", "learned.neighbour_tau_teacher=0.02",
                "name=multi_lite2_nbonly_t02"]),
    *[("ensemble (Lite2 + Lite0, the two strongest members)", f"the two, signed sqrt, {kind}-{dims} fitted on "
       "train (what 64 dimensions cost)", ENSEMBLE,
       [f"members=[{TWO_BEST}]", f"projection={projection}", f"pca={dims}", f"name=multi_lite2_{projection}{dims}"])
      for dims in (128, 256) for kind, projection in (("PCA", "pca"), ("learned", "learned"))],
    *pair_rows("ensemble (Lite2 12 epochs + Lite0 12 epochs)", TWO_BEST_12, "multi_lite2_12"),
    ("ensemble (Lite2 12 epochs + Lite0 12 epochs)", "neighbour term only, fitted on the index images, "
     "their labels unused (transductive)", ENSEMBLE,
     [f"members=[{TWO_BEST_12}]", "learned.label_weight=0", "fit_on=index", "name=multi_lite2_12_nbonly_index"]),
    *pair_rows("ensemble (Lite2 12 epochs + Lite0 12 epochs, both pooled by GeM p=3)", TWO_GEM, "multi_gem"),
    *pair_rows(SEED3_STEP, SEED3_LITE0, "multi_lite2s3_lite0"),
    *pair_rows(SEEDS_STEP, LITE2_SEEDS, "multi_lite2_seeds",
               "the two averaged (merge: mean), signed sqrt, no projection (1,280-d)",
               "the two averaged, signed sqrt, PCA-64 fitted on train"),
    *pair_rows(SEEDS_STEP, LITE2_SEEDS, "multi_lite2_seeds_cat",
               "the two kept apart (merge: concat), signed sqrt concatenation (2,560-d)",
               "the two kept apart, signed sqrt, PCA-64 fitted on train", extra=("merge=concat",)),
    *[(SEEDS_STEP, f"control: {member} alone, the recipe's signed sqrt + learned-64", ENSEMBLE,
       [f"members=[{member}]", f"name=multi_{member}_alone"]) for member in LITE2_SEEDS.split(",")],
    *pair_rows(SEEDS_STEP, SEEDS_LITE0, "multi_lite2_seeds_lite0",
               "the two averaged + the 12-epoch Lite0 (GeM p=3), signed sqrt concatenation (2,560-d)",
               "the two averaged + that Lite0, signed sqrt, PCA-64 fitted on train"),
    *pair_rows("ensemble (two Lite2 seeds + Lite0 12 epochs + the 12-epoch MobileNet-v2, all GeM p=3)",
               SEEDS_LITE0_MNV2, "multi_lite2_seeds_lite0_mnv2",
               "the four, Lite2s averaged, signed sqrt concatenation (3,840-d)",
               "the four, signed sqrt, PCA-64 fitted on train"),
    *pair_rows("ensemble (two Lite2 seeds + Lite0 12 epochs + the 12-epoch MobileNet-v2, all GeM p=3)",
               SEEDS_LITE0_MNV2, "multi_lite2_seeds_lite0_mnv2_cat",
               "the four kept apart (merge: concat), signed sqrt concatenation (5,120-d)",
               "the four kept apart, signed sqrt, PCA-64 fitted on train", extra=("merge=concat",)),
    *[("ensemble (two Lite2 seeds + Lite0 12 epochs + the 12-epoch MobileNet-v2, all GeM p=3)",
       f"the four, signed sqrt, learned-{dims} fitted on train (what 64 dimensions cost)", ENSEMBLE,
       [f"members=[{SEEDS_LITE0_MNV2}]", f"pca={dims}", f"name=multi_lite2_seeds_lite0_mnv2_learned{dims}"])
      for dims in (128, 256)],
    *pair_rows(FIVE_STEP, ALL_FOUR_FAMILIES, "multi_four_families",
               "the five, Lite2s averaged, signed sqrt concatenation (4,864-d)",
               "the five, signed sqrt, PCA-64 fitted on train"),
    *pair_rows(FIVE_STEP, ALL_FOUR_FAMILIES, "multi_four_families_cat",
               "the five kept apart (merge: concat), signed sqrt concatenation (6,144-d)",
               "the five kept apart, signed sqrt, PCA-64 fitted on train", extra=("merge=concat",)),
    (FIVE_STEP, "the recipe with the five kept apart and margin 0.35, the hold-out pick "
     "(bench/multi_projection_holdout.py: chosen on held-out train classes)", ENSEMBLE,
     [f"members=[{ALL_FOUR_FAMILIES}]", "merge=concat", "learned.margin=0.35", "name=multi_four_families_cat_m035"]),
    *pair_rows("ensemble (two Lite2 seeds + three Lite0 runs, all pooled by GeM p=3)",
               ",".join([SEEDS_LITE0, *(name for _, _, name in LITE0_SUB3_GEM3)]), "multi_lite2_seeds_lite0x3",
               "the five, Lite2s averaged and Lite0s averaged, signed sqrt concatenation (2,560-d)",
               "the five, signed sqrt, PCA-64 fitted on train"),
    *[(SEEDS_STEP, f"the three, signed sqrt, learned-{dims} fitted on train (what 64 dimensions cost)", ENSEMBLE,
       [f"members=[{SEEDS_LITE0}]", f"pca={dims}", f"name=multi_lite2_seeds_lite0_learned{dims}"])
      for dims in (128, 256)],
    *[(SEEDS_STEP, f"the three, the recipe {said}", ENSEMBLE,
       [f"members=[{SEEDS_LITE0}]", *sets, f"name=multi_lite2_seeds_lite0_{suffix}"])
      for said, sets, suffix in (
          ("on the train labels only (learned.neighbour_weight 0: no neighbour term)", ["learned.neighbour_weight=0"],
           "labelsonly"),
          ("with the neighbour term x3", ["learned.neighbour_weight=3"], "nb3"),
          ("without the signed square root (power 1)", ["power=1"], "power1"))],
    (SEEDS_STEP, "the three, neighbour term only, fitted on the index images, their labels unused (transductive)",
     ENSEMBLE, [f"members=[{SEEDS_LITE0}]", "learned.label_weight=0", "fit_on=index",
                "name=multi_lite2_seeds_lite0_nbonly_index"]),
    ("student (EfficientNet-Lite0) of the Lite2 + Lite0 ensemble", "the student recipe with teacher "
     "multi_lite2_12, initialised from lite0_multi_long_12ep", STUDENT,
     ["teacher=multi_lite2_12", "backbone.init_from=lite0_multi_long_12ep", "name=lite0_student_of_lite2_12"]),
    ("student (EfficientNet-Lite2) of the Lite2 + Lite0 ensemble", "the student recipe on Lite2 (224 px, eval "
     "260 px, 2 epochs instead of 4) with teacher multi_lite2_12, initialised from lite2_multi_12ep", STUDENT,
     lite2_student("multi_lite2_12", "lite2_multi_12ep", "lite2_student_of_lite2_12")),
    *[("student (EfficientNet-Lite2) of the two Lite2 seeds + Lite0 ensemble", variant, STUDENT,
       [*lite2_student("multi_lite2_seeds_lite0", init_from, f"lite2_student_of_lite2_seeds_lite0{suffix}", epochs,
                       px), *extra])
      for variant, init_from, suffix, epochs, px, extra in (
          ("the same Lite2 student with teacher multi_lite2_seeds_lite0 (64-d recipe), initialised from "
           "lite2_multi_12ep_sub3 (the shipped seed)", "lite2_multi_12ep_sub3", "", 2, 224, []),
          ("the same, 3 epochs instead of 2", "lite2_multi_12ep_sub3", "_3ep", 3, 224, []),
          ("the same (2 epochs), initialised from lite2_multi_12ep_sub3_seed3 (the 0.680 member's weights) instead",
           "lite2_multi_12ep_sub3_seed3", "_init_seed3", 2, 224, []),
          # lite2_multi_12ep_sub3_evalgem3: the shipped seed retrained under its GeM row's name (same weights)
          ("the same (2 epochs, the shipped seed's weights: lite2_multi_12ep_sub3_evalgem3 holds them), distilled "
           "at 260 px (the eval size) instead of 224", "lite2_multi_12ep_sub3_evalgem3", "_260px", 2, 260, []),
          ("the same (2 epochs, the shipped seed's weights, 224 px) + ArcFace on the train labels (weight 0.5)",
           "lite2_multi_12ep_sub3_evalgem3", "_arcface", 2, 224, ["loss.arcface=0.5"]),
          ("the same (2 epochs, the shipped seed's weights, 224 px), reseeded (seed 1 instead of 0: batch order and "
           "augmentation, run-to-run noise)", "lite2_multi_12ep_sub3_evalgem3", "_seed1", 2, 224, ["seed=1"]),
          ("the same (2 epochs, the shipped seed's weights, 224 px) + multi-teacher: one projector per member maps "
           "the student's backbone feature to that member's unreduced 1,280-d feature (loss.members 1)",
           "lite2_multi_12ep_sub3_evalgem3", "_multiteacher", 2, 224, ["loss.members=1"]),
          ("the same (2 epochs, the shipped seed's weights, 224 px), the batch-similarity KL taken from the "
           "ensemble's unreduced 2,560-d concatenation instead of its 64-d output (loss.sim_kl_teacher: concat)",
           "lite2_multi_12ep_sub3_evalgem3", "_concat_kl", 2, 224, ["loss.sim_kl_teacher=concat"]))],
    ("student (EfficientNet-Lite2) of the four-member ensemble (two Lite2 seeds + Lite0 + MobileNet-v2)",
     "the same Lite2 student (2 epochs, the shipped seed's weights, 224 px) with teacher "
     "multi_lite2_seeds_lite0_mnv2_cat (the four kept apart, 64-d recipe, 0.665)", STUDENT,
     lite2_student("multi_lite2_seeds_lite0_mnv2_cat", "lite2_multi_12ep_sub3_evalgem3",
                   "lite2_student_of_lite2_seeds_lite0_mnv2")),
    ("student (EfficientNet-Lite2) of the five-member ensemble (four families)",
     "the same Lite2 student (2 epochs, the shipped seed's weights, 224 px) with teacher "
     "multi_four_families_cat_m035 (the five kept apart, margin 0.35: the hold-out pick)", STUDENT,
     lite2_student("multi_four_families_cat_m035", "lite2_multi_12ep_sub3_evalgem3", "lite2_student_of_four_families")),
    *[("student (EfficientNet-Lite2) of the seed-3 Lite2 + Lite0 ensemble", variant, STUDENT,
       [*lite2_student("multi_lite2s3_lite0", "lite2_multi_12ep_sub3_seed3", name), *extra])
      for variant, name, extra in (
          ("the same Lite2 student (2 epochs) with teacher multi_lite2s3_lite0, initialised from "
           "lite2_multi_12ep_sub3_seed3 (the 0.680 member's weights)", "lite2_student_of_lite2s3_lite0", []),
          ("the same, reseeded (seed 1 instead of 0: batch order and augmentation, run-to-run noise)",
           "lite2_student_of_lite2s3_lite0_seed1", ["seed=1"]))],
    *lodo_current_rows(),
    *lodo_gem_rows(),
    *[row for weight in (10, 30) for row in lodo_rows(  # retention by feature distillation instead of WiSE-FT
        f"leave-domain-out (no illustrations, dishes), feature_kd {weight} members", f" + feature_kd {weight}",
        [f"backbone.feature_kd={weight}"], f"_fkd{weight}")],
    *[row for weight in (10, 30) for row in lodo_rows(  # both retention terms: the feature_kd runs above, interpolated
        f"leave-domain-out (no illustrations, dishes), feature_kd {weight} + WiSE-FT 0.5 members",
        f" + feature_kd {weight} + WiSE-FT 0.5", [f"backbone.feature_kd={weight}", "backbone.wise_ft=0.5"],
        f"_fkd{weight}_wise")],
    *lodo_wise_rows(0.5), *lodo_wise_rows(0.3, LODO_REDUCERS),
    *lodo_rows("leave-domain-out (no illustrations, dishes), untrained backbones (neck and head only)",
               ", backbone frozen (neck and head only: its untrained backbone)", HEAD_ONLY, "_headonly",
               HEAD_ONLY_REDUCERS),
]
LODO = ROOT / "configs" / "pipelines" / "multi_lodo_cpu.yaml"
RESULT = ROOT / "bench" / "results" / "multi_variants.json"
LODO_STEP = "leave-domain-out (no illustrations, dishes)"


def run_variant(ws: Workspace, recipe: str, overrides: list[str]) -> tuple[str, str | None]:
    """Train or fit the variant (reusing finished work); returns (MODEL spec, member feature)."""
    name, path = variant_name(recipe, overrides), ROOT / recipe
    if recipe.startswith("configs/ensemble/"):
        fuse_or_reuse(ensemble_cfg(ws, str(path), [*overrides, f"name={name}"]), ws)
        return f"ensemble:{name}", None
    sets = [*overrides, f"name={name}", "eval.enabled=false"]
    if recipe.startswith("distill/"):
        distill(load_student_cfg(path, sets), ws)
        return f"student:{name}", None
    train_member(load_member_cfg(path, sets), ws)
    return name, "backbone"


def eval_size(overrides: list[str]) -> tuple[list[str], int | None]:
    """The recipe overrides without the bench's `eval_px=N`, and N (None: the model file's eval size)."""
    sizes = [int(o[len(EVAL_PX):]) for o in overrides if o.startswith(EVAL_PX)]
    return [o for o in overrides if not o.startswith(EVAL_PX)], (sizes[-1] if sizes else None)


def at_size(model: ResolvedModel, size_px: int) -> ResolvedModel:
    """The same trained member, its images resized to `size_px` instead of its eval size."""
    parts = [dataclasses.replace(p, embedder=dataclasses.replace(p.embedder, size_px=size_px)) for p in model.parts]
    return dataclasses.replace(model, name=f"{model.name}@{size_px}px", parts=parts)


def row(step: str, variant: str, report: dict, seconds: float) -> dict:
    return {"step": step, "variant": variant, "model": report["model"], "dim": report["dim"],
            "macro_mP@5": report["macro_mP@5"], "mP@5": report["mP@5"], "per_domain": report["per_domain"],
            "seconds": round(seconds, 1)}


def any_of(texts: list[str]) -> str:
    """The --only / --skip texts as the table header names them: 'a' or 'b'."""
    return " or ".join(repr(text) for text in texts)


def table(result: dict) -> str:
    return domain_table(
        f"Command: `{result['command']}` — {result['date']}, {result['machine']}, one run, in the workspace "
        "of `ens pipeline configs/pipelines/multi_cpu.yaml`. configs/data/multi.yaml: 888 queries against "
        "one shared index of 3,626 images, flip TTA, each recipe's eval size (160 px; Lite2 260 px). "
        "s: seconds this invocation spent on the row, "
        "training included only where it trained (a rerun reuses finished runs and only scores)."
        + (f" Only the rows whose step or variant contains {any_of(result['only'])}"
           + (f" and not {any_of(result['skip'])}" if result.get("skip") else "")
           + " were run by this command, in another workspace; the other rows keep their numbers and s from the "
           "previous invocation (bench/results/multi_variants.json), in an earlier workspace."
           if result.get("only") else ""),
        result["rows"], ["step", "variant"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs")
    parser.add_argument("--no-lodo", action="store_true", help="skip the leave-domain-out pipeline")
    parser.add_argument("--only", metavar="TEXT", action="append", help="run only the rows whose step or variant "
                        "contains TEXT (repeatable; no leave-domain-out); the other rows keep their numbers "
                        "from " + str(RESULT))
    parser.add_argument("--skip", metavar="TEXT", action="append", default=[], help="with --only: leave out the "
                        "rows whose step or variant contains TEXT (repeatable; where one --only text is part of "
                        "longer variant texts)")
    args = parser.parse_args()
    if args.skip and not args.only:
        parser.error("--skip narrows the rows --only selects; give --only too")
    ws = Workspace.at(args.workdir)
    if args.only:
        previous_rows()  # fail now, not after the first row, when there are no rows to keep
    rows = {}  # (step, variant) -> row, the rows this invocation ran
    lodo = {}  # the leave-domain-out pipeline first: its members are what the WiSE-FT rows interpolate
    if not args.no_lodo and not args.only:
        started = time.perf_counter()
        summary = run_pipeline(load_pipeline_cfg(LODO), ws)
        seconds = (time.perf_counter() - started) / len(summary["rows"])
        lodo = {(LODO_STEP, r["model"]): row(LODO_STEP, r["model"], {"dim": r.get("dim", "-"), **r}, seconds)
                for r in summary["rows"]}
    for step, variant, recipe, overrides in VARIANTS:
        if args.only and (not mentions(step, variant, args.only) or mentions(step, variant, args.skip)):
            continue
        started = time.perf_counter()
        sets, size_px = eval_size(overrides)
        spec, features = run_variant(ws, recipe, sets)
        model = resolve_model(spec, ws, features)
        model = at_size(model, size_px) if size_px else model
        report = evaluate(model, ws, str(DATA),
                          out=ws.reports_dir / "multi_variants" / f"{model.name.replace(':', '_')}.json")
        rows[step, variant] = row(step, variant, report, time.perf_counter() - started)
        save(rows, done=False, only=args.only, skip=args.skip)  # kept, even if a later row is stopped
        print(step, variant, f"macro {report['macro_mP@5']:.3f}", flush=True)
    rows.update(lodo)
    print(save(rows, done=True, only=args.only, skip=args.skip))


def mentions(step: str, variant: str, texts: Sequence[str]) -> bool:
    """True where the row's step or variant contains one of `texts` (how --only and --skip pick rows)."""
    return any(text in step or text in variant for text in texts)


def previous_rows() -> dict[tuple[str, str], dict]:
    """The rows of the last invocation, by (step, variant); rows of variants no longer listed are dropped."""
    if not RESULT.is_file():
        raise SystemExit(f"{RESULT}: --only keeps the other rows from here, but there is no such file; "
                         "run the bench once without --only")
    result = json.loads(RESULT.read_text())
    listed = {(step, variant) for step, variant, _, _ in VARIANTS}
    return {(r["step"], r["variant"]): r for r in result["rows"]
            if (r["step"], r["variant"]) in listed or r["step"] == LODO_STEP}


def save(ran: dict[tuple[str, str], dict], done: bool, only: list[str] | None, skip: Sequence[str] = ()) -> str:
    """Write the rows (VARIANTS order, then leave-domain-out) to the JSON and BENCHMARKS.md.

    With --only the JSON is read again here and only the rows this invocation ran replace its rows,
    so two invocations running at once keep each other's finished rows.
    """
    by_key = {**previous_rows(), **ran} if only else ran
    order = {(step, variant): i for i, (step, variant, _, _) in enumerate(VARIANTS)}
    rows = sorted(by_key.values(), key=lambda r: order.get((r["step"], r["variant"]), len(order)))
    flags = [*(("--only", text) for text in only or []), *(("--skip", text) for text in skip)]
    command = shlex.join(["python", "bench/multi_variants.py", *(arg for flag in flags for arg in flag)])
    result = {"command": command, "only": only, "skip": list(skip), "date": str(date.today()), "complete": done,
              "machine": machine(), "rows": rows}
    text = table(result)
    record("multi_variants", result, "GUIE-mini variants: every option measured on multi", text)
    return text


if __name__ == "__main__":
    main()
