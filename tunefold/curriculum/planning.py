"""TAPIR's curriculum plan as pure functions: re-balance to a target task mix, then split into rounds of rising
difficulty. Kept apart from the stage so the arithmetic is tested on hand-made inputs."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunefold.data.records import Record
from tunefold.data.subsets import apportion
from tunefold.errors import InputError


def task_of(r: Record) -> str:
    return str(r.metadata.get("task_type", "other"))


def mfd_of(r: Record) -> float:
    return float(r.metadata.get("mfd", 0.0))


# (task type, its records hardest first, how many more it needs) -> new records of that type (possibly fewer)
Expand = Callable[[str, list[Record], int], list[Record]]


@dataclass
class Balanced:
    records: list[Record]
    dropped: list[tuple[Record, str]]
    repeated: int
    target: dict[str, float]  # the target actually used (absent task types' shares redistributed)
    warnings: list[str] = field(default_factory=list)
    expanded: int = 0


def rebalance(
    records: list[Record], target: dict[str, float], size: int | None, seed: int, expand: Expand | None = None
) -> Balanced:
    """Pick `size` records (default: all) so task types follow `target`.

    Within a task the hardest (highest MFD) are kept first; a task with fewer records than its quota gets new
    ones from `expand` (TAPIR: the teacher writes more of that type), and what is still missing is filled by
    repeats (counted); a target task with no records at all gives its share to the others, with a warning.
    Records of task types outside the target are dropped with that reason.
    """
    if not records:
        raise InputError("no instructions to plan a curriculum from (every one was dropped upstream)")
    by_task: dict[str, list[Record]] = {}
    for r in records:
        by_task.setdefault(task_of(r), []).append(r)
    present = {t: s for t, s in target.items() if s > 0 and by_task.get(t)}
    if not present:
        raise InputError(
            f"none of the target task types ({', '.join(t for t, s in target.items() if s > 0)}) occurs in the "
            f"kept instructions (they are: {', '.join(sorted(by_task))}); change curriculum.plan.target"
        )
    warnings = [
        f"task type {t!r} has a target share of {s:g} but no instructions; its share goes to the others"
        for t, s in target.items()
        if s > 0 and t not in present
    ]
    norm = sum(present.values())
    used = {t: s / norm for t, s in present.items()}
    quotas = apportion(used, size or len(records))
    rng = random.Random(seed)
    chosen: list[Record] = []
    dropped: list[tuple[Record, str]] = []
    repeated = expanded = 0
    for task, pool in sorted(by_task.items()):
        quota = quotas.get(task, 0)
        if quota == 0:
            reason = "task type not in curriculum.plan.target" if task not in target else "task share rounds to 0"
            dropped += [(r, reason) for r in pool]
            continue
        ranked = sorted(pool, key=lambda r: (-mfd_of(r), r.id))
        chosen += ranked[:quota]
        dropped += [(r, f"over the {task} quota of {quota}") for r in ranked[quota:]]
        extra = quota - len(ranked)
        if extra > 0 and expand is not None:
            new = expand(task, ranked, extra)[:extra]
            chosen += new
            expanded += len(new)
            extra -= len(new)
        if extra > 0:
            chosen += [ranked[rng.randrange(len(ranked))] for _ in range(extra)]
            repeated += extra
    return Balanced(chosen, dropped, repeated, used, warnings, expanded)


def _cap(values: list[int], total: int, extra_to_last: bool) -> list[int]:
    """Lower the largest values to one common ceiling until they sum to `total`, keeping their order (a rising
    list stays rising); the leftover units go to capped entries from the end (or the start)."""
    if sum(values) <= total:
        return values
    ceiling = max(values)
    while sum(min(v, ceiling) for v in values) > total:
        ceiling -= 1
    out = [min(v, ceiling) for v in values]
    left = total - sum(out)
    for i in reversed(range(len(out))) if extra_to_last else range(len(out)):
        if left and values[i] > ceiling:
            out[i] += 1
            left -= 1
    return out


def split_rounds(records: list[Record], hard_share: list[float], hard_quantile: float) -> list[list[Record]]:
    """K rounds of near-equal size whose share of hard records follows `hard_share`, easiest material first.

    Hard = MFD above the `hard_quantile` quantile. When a pool is too small for the asked shares, the largest
    asks are lowered evenly, so the hard share still never falls from one round to the next. Both pools are
    consumed in rising MFD order, so later rounds get harder material.
    """
    k = len(hard_share)
    if len(records) < k:
        raise InputError(f"{len(records)} instruction(s) cannot fill {k} curriculum rounds (one needs at least one)")
    ranked = sorted(records, key=lambda r: (mfd_of(r), r.id))
    cut = min(len(ranked) - 1, math.floor(hard_quantile * len(ranked)))
    easy, hard = ranked[:cut], ranked[cut:]
    sizes = [len(records) // k + (1 if i < len(records) % k else 0) for i in range(k)]
    n_hard = _cap([min(n, round(s * n)) for s, n in zip(hard_share, sizes, strict=True)], len(hard), True)
    n_easy = _cap([n - h for n, h in zip(sizes, n_hard, strict=True)], len(easy), False)
    rounds: list[list[Record]] = []
    for n, e in zip(sizes, n_easy, strict=True):
        rounds.append(hard[: n - e] + easy[:e])
        hard, easy = hard[n - e :], easy[e:]
    return rounds


def distribution(records: list[Record]) -> dict[str, float]:
    counts = Counter(task_of(r) for r in records)
    return {t: round(c / len(records), 4) for t, c in sorted(counts.items())} if records else {}


def round_stats(rounds: list[list[Record]], hard_threshold: float) -> list[dict[str, Any]]:
    return [
        {
            "round": f"r{i}",
            "records": len(rs),
            "mean_mfd": round(sum(map(mfd_of, rs)) / len(rs), 3),
            "hard_share": round(sum(mfd_of(r) >= hard_threshold for r in rs) / len(rs), 3),
        }
        for i, rs in enumerate(rounds, 1)
    ]


def pick_round(
    records: list[Record], size: int, hard_share: float, hard_quantile: float, min_mfd: float
) -> tuple[list[Record], list[tuple[Record, str]]]:
    """One adaptive round: `size` records chosen by the MFD just re-measured with the current student.

    Records it now fits (MFD <= `min_mfd`) are left out; of the rest, hard = MFD above the `hard_quantile`
    quantile, and the round takes `hard_share` of its size from the hard ones, the remainder from the others,
    each hardest first (what the student is furthest from); a side short of records is made up from the other.
    """
    live = sorted((r for r in records if mfd_of(r) > min_mfd), key=lambda r: (-mfd_of(r), r.id))
    dropped = [
        (r, f"the student fits it now: MFD {mfd_of(r):g} <= min_mfd {min_mfd:g}")
        for r in records
        if mfd_of(r) <= min_mfd
    ]
    n_hard_pool = len(live) - min(len(live) - 1, math.floor(hard_quantile * len(live))) if live else 0
    hard, easy = live[:n_hard_pool], live[n_hard_pool:]
    n_hard = min(len(hard), round(hard_share * size))
    n_easy = min(len(easy), size - n_hard)
    n_hard = min(len(hard), size - n_easy)
    chosen = hard[:n_hard] + easy[:n_easy]
    dropped += [(r, f"not among the round's {size} picks") for r in hard[n_hard:] + easy[n_easy:]]
    return chosen, dropped
