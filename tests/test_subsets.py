"""Data fractions for the DPO data-efficiency sweep: nested across fractions, stratified by source."""

from __future__ import annotations

import itertools
import math

import pytest

from tunefold.data.subsets import nested_fraction

FRACTIONS = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]


def pool() -> list[tuple[str, int]]:
    """1,000 pairs from a large source, 150 from a small one and 3 from a tiny one, interleaved."""
    sizes = {"big": 1000, "small": 150, "tiny": 3}
    items = [(name, i) for name, n in sizes.items() for i in range(n)]
    return sorted(items, key=lambda it: (it[1] * 7919) % 1153)  # sources mixed through the file


def test_each_fraction_lies_inside_the_next_and_keeps_every_source_share() -> None:
    items = pool()
    picked = [set(nested_fraction(items, lambda it: it[0], f, seed=3)) for f in FRACTIONS]
    for small, large in itertools.pairwise(picked):
        assert small < large  # strictly nested
    assert picked[-1] == set(range(len(items)))
    for f, idx in zip(FRACTIONS, picked, strict=True):
        for source, n in {"big": 1000, "small": 150, "tiny": 3}.items():
            assert sum(items[i][0] == source for i in idx) == math.ceil(f * n)  # the tiny source is never lost


def test_seeded_reproducible_and_independent_of_the_other_sources() -> None:
    items = pool()
    by_source = lambda it: it[0]  # noqa: E731
    assert nested_fraction(items, by_source, 0.3, seed=1) == nested_fraction(items, by_source, 0.3, seed=1)
    assert nested_fraction(items, by_source, 0.3, seed=1) != nested_fraction(items, by_source, 0.3, seed=2)
    small_only = [it for it in items if it[0] == "small"]
    alone = {small_only[i] for i in nested_fraction(small_only, by_source, 0.3, seed=1)}
    mixed = {items[i] for i in nested_fraction(items, by_source, 0.3, seed=1) if items[i][0] == "small"}
    assert alone == mixed  # adding or removing another source does not reshuffle this one


def test_a_random_sample_per_fraction_would_not_be_nested() -> None:
    """The property is not automatic: the former draw (one `random.sample` per fraction) loses it at 20k pairs, where
    `random.sample` switches algorithm between the two sizes (the issue's example)."""
    import random

    n = 20_000
    twenty, forty = (set(random.Random(0).sample(range(n), round(f * n))) for f in (0.2, 0.4))
    assert not twenty <= forty


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_the_unit_interval_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        nested_fraction([("a", 1)], lambda it: it[0], fraction, seed=0)
