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


def _two_domains():
    """Domain 'big': 6 classes x 10 rows; domain 'small': 2 classes x 10 rows (cap 10, no floor)."""
    targets = [c for c in range(8) for _ in range(10)]
    domains = ["big" if c < 6 else "small" for c in targets]
    return targets, domains


def test_domain_shares_follow_size_to_the_alpha():
    targets, domains = _two_domains()
    cfg = SamplerCfg(min_per_class=1, max_per_class=10, oversample_to=0)
    plain = ClassBalancedSampler(targets, cfg, seed=0, domains=domains)
    assert Counter(domains[i] for i in plain) == {"big": 60, "small": 20}  # off: the class-balanced epoch
    assert list(plain) == list(ClassBalancedSampler(targets, cfg, seed=0))  # ...and exactly its order
    equal = ClassBalancedSampler(targets, cfg.model_copy(update={"domain_alpha": 0.0}), seed=0, domains=domains)
    drawn = list(equal)
    assert len(drawn) == len(equal) == 80 and Counter(domains[i] for i in drawn) == {"big": 40, "small": 40}
    assert len({i for i in drawn if domains[i] == "small"}) == 20  # the small domain: every row, then repeats
    half = ClassBalancedSampler(targets, cfg.model_copy(update={"domain_alpha": 0.5}), seed=0, domains=domains)
    share = Counter(domains[i] for i in half)["small"] / 80
    assert share == round(20**0.5 / (60**0.5 + 20**0.5) * 80) / 80  # sqrt-size weighting: 0.366
