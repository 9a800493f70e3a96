from collections import Counter

from ensemble.config.schema import SamplerCfg
from ensemble.data.sampler import ClassBalancedSampler, kept_classes


def test_drop_cap_and_oversample():
    labels = ["rare"] * 2 + ["small"] * 3 + ["big"] * 50
    cfg = SamplerCfg(min_per_class=3, max_per_class=10, oversample_to=6)
    classes = kept_classes(labels, cfg)
    assert classes == ["big", "small"]
    targets = [classes.index(label) if label in classes else -1 for label in labels]
    sampler = ClassBalancedSampler(targets, cfg, seed=0)
    counts = Counter(targets[i] for i in sampler)
    assert counts == {0: 10, 1: 6} and len(sampler) == 16
    assert -1 not in counts
    # the capped class draws distinct images; the oversampled one covers all of its own
    drawn_big = [i for i in sampler if targets[i] == 0]
    assert len(set(drawn_big)) == 10
    assert {i for i in sampler if targets[i] == 1} == {2, 3, 4}


def test_epochs_differ_and_are_repeatable():
    targets = [i % 4 for i in range(40)]
    sampler = ClassBalancedSampler(targets, SamplerCfg(min_per_class=1, max_per_class=5, oversample_to=0), seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and first != second
