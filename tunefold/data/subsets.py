"""Seeded, stratified subsets: nested data fractions for a data-efficiency sweep, and the held-out validation
split.

Nested fractions: each stratum (e.g. a preference pair's source) is shuffled once by a permutation seeded by the
run's seed and the stratum's name, and a fraction f keeps its first ceil(f * n) items. Every smaller fraction is
therefore inside every larger one (the 20% subset is part of the 40% one), and each source keeps its share of the
pool at every fraction; independent `random.sample` draws per fraction have neither property.

The validation split holds out whole prompt groups (records whose user turns are the same words, so a preference
pair and its SFT twin, or a copy differing only in case, punctuation or spacing, fall on one side), a total of
max(`min_count`, fraction x groups) apportioned over the strata by largest remainder, each stratum's groups ranked
by a seeded hash of the group's own words. A group's rank does not depend on the other groups, so new data joins
the split without reshuffling it: a group held out stays held out while its stratum's quota does not shrink, and
a champion and a challenger trained on growing data are measured on mostly the same held-out set.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tunefold.data.decontam import words
from tunefold.data.records import Record, content_id

T = TypeVar("T")


def apportion(shares: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding: integer counts summing to `total`, each within 1 of share x total."""
    raw = {k: v * total for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in raw.items()}
    left = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[:left]:
        counts[k] += 1
    return counts


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


def prompt_key(r: Record) -> str:
    """The words of a record's user turns: records with the same key ask the same thing."""
    return " ".join(words(" ".join(m.content for m in r.messages if m.role == "user")))


def group_rank(seed: int, key: str) -> str:
    """A prompt group's place in the held-out order: a seeded hash of its words, the same whatever else is in the
    data."""
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


@dataclass
class Split:
    train: list[Record]
    val: list[Record]
    strata: dict[str, dict[str, int]]  # per stratum: records on each side


def holdout_split(
    records: list[Record], fraction: float, min_count: int, seed: int, stratum: Callable[[Record], str]
) -> Split:
    """Hold out about `fraction` of the prompt groups (at least `min_count`, at most half), stratified."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[prompt_key(r)].append(r)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):  # the seed decides, not the input order; a group with a pair counts as a pair
        first = min(groups[key], key=lambda r: (r.rejected is None, r.id))
        by_stratum[stratum(first)].append(key)
    total = min(max(min_count, round(fraction * len(groups))), len(groups) // 2)
    quotas = apportion({s: len(keys) / len(groups) for s, keys in by_stratum.items()}, total) if groups else {}
    held = set()
    for name, keys in by_stratum.items():
        held |= set(sorted(keys, key=lambda k: group_rank(seed, k))[: quotas[name]])
    train = [r for r in records if prompt_key(r) not in held]
    val = [r for r in records if prompt_key(r) in held]
    strata = {
        name: {
            "train": sum(len(groups[k]) for k in keys if k not in held),
            "val": sum(len(groups[k]) for k in keys if k in held),
        }
        for name, keys in sorted(by_stratum.items())
    }
    return Split(train, val, strata)


def without_heldout(records: list[Record], heldout: list[Record]) -> tuple[list[Record], list[Record]]:
    """(kept, dropped): training records whose prompt is one of the held-out prompts are dropped, so a stage
    that trains on data made after the split (a curriculum round, preference pairs) never learns a held-out
    prompt."""
    held = {prompt_key(r) for r in heldout}
    kept = [r for r in records if prompt_key(r) not in held]
    return kept, [r for r in records if prompt_key(r) in held]


def unique_conversations(records: list[Record]) -> list[list[dict[str, str]]]:
    """The distinct conversations of `records` (a preference pair's chosen side and its SFT twin are one), in
    order: each is evaluated once."""
    seen: dict[str, list[dict[str, str]]] = {}
    for r in records:
        seen.setdefault(content_id(r.messages), [m.model_dump() for m in r.messages])
    return list(seen.values())
