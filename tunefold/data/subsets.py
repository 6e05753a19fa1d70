"""Nested, stratified data fractions, so a data-efficiency sweep compares like with like.

Each stratum (e.g. a preference pair's source) is shuffled once by a permutation seeded by the run's seed and the
stratum's name, and a fraction f keeps its first ceil(f * n) items. Every smaller fraction is therefore inside every
larger one (the 20% subset is part of the 40% one), and each source keeps its share of the pool at every fraction;
independent `random.sample` draws per fraction have neither property.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def stratum_order(n: int, seed: int, stratum: str) -> list[int]:
    """The seeded permutation of one stratum's positions; the same for every fraction of a sweep."""
    key = hashlib.sha256(f"{seed}\0{stratum}".encode()).digest()
    order = list(range(n))
    random.Random(key).shuffle(order)
    return order


def nested_fraction(items: Sequence[T], stratum: Callable[[T], str], fraction: float, seed: int) -> list[int]:
    """Indices (ascending) of the first ceil(fraction * n) items of each stratum's seeded permutation."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        members[stratum(item)].append(i)
    kept = []
    for name, idx in members.items():
        order = stratum_order(len(idx), seed, name)
        kept += [idx[j] for j in order[: math.ceil(fraction * len(idx))]]
    return sorted(kept)
