"""Judge audit: does the judge tell answers apart, or does it answer by slot and give everyone the same score?

Three measurements, each a check against `eval.audit` thresholds:
- position: of MT-Bench's both-order pairwise verdicts, how many chose the same slot (A twice or B twice) rather
  than the same answer; a judge that follows position turns every pair into a tie and the win rate into 0.5.
- discrimination: probes of known quality built from the data, a reference answer against degraded copies of
  itself (its first third, its sentences shuffled, its last number changed); the reference should win.
- spread: how much of the judge's ratings is one value (a judge that rates everything 10 ranks nothing).
A check with too few usable items is "not measured", and an unmeasured check leaves the judge untrusted: a
judge is trusted only on evidence. The result (`JudgeAudit`) is what the report and the promotion gate read.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from tunefold.config import AuditSettings
from tunefold.errors import InputError
from tunefold.eval.flask import Instance
from tunefold.eval.mtbench import Question
from tunefold.fractal.split import split_sentences

Status = Literal["pass", "fail", "not_measured", "skipped"]
_WORD = re.compile(r"\S+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")


# --- degradations --------------------------------------------------------------------------------------------


def _rng(seed: int, *parts: object) -> random.Random:
    """A generator that depends only on the seed and what it is for, so every draw is reproducible on its own."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def truncate(text: str) -> str | None:
    """The first third of the words (formatting kept); None for texts under three words."""
    words = list(_WORD.finditer(text))
    if len(words) < 3:
        return None
    return text[: words[len(words) // 3 - 1].end()]


def shuffle_sentences(text: str, rng: random.Random) -> str | None:
    """The sentences (code blocks and list items whole) in another order; None with fewer than two to move."""
    units = split_sentences(text)
    if len(set(units)) < 2:
        return None
    order = list(range(len(units)))
    rng.shuffle(order)
    if [units[i] for i in order] == units:
        order = order[1:] + order[:1]
    return ("\n" if "\n" in text else " ").join(units[i] for i in order)


def change_last_number(text: str, rng: random.Random) -> str | None:
    """The last number in the text moved by 1-9 (never below 0, decimals kept); None when there is no number."""
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = found[-1]
    old = m.group()
    delta = rng.randint(1, 9)
    value = float(old) + (delta if float(old) < delta or rng.random() < 0.5 else -delta)
    decimals = len(old.split(".")[1]) if "." in old else 0
    return text[: m.start()] + f"{value:.{decimals}f}" + text[m.end() :]


def degrade(text: str, kind: str, rng: random.Random) -> str | None:
    """One degraded copy of `text`, or None when this degradation does not apply to it."""
    if kind == "truncate":
        return truncate(text)
    if kind == "shuffle":
        return shuffle_sentences(text, rng)
    if kind == "number":
        return change_last_number(text, rng)
    raise ValueError(f"unknown degradation {kind!r}")


# --- probes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A question with an answer known to be good: `key` names its source ("mt_bench:5", "flask:3")."""

    key: str
    question: Question
    answer: str


@dataclass(frozen=True)
class Probe:
    reference: Reference
    degradation: str
    text: str


def references_from(questions: Iterable[Question], instances: Iterable[Instance]) -> list[Reference]:
    """MT-Bench reference answers (turn 1: later turns depend on the conversation) and FLASK's answers.

    An MT-Bench question keeps its category, so the judge sees the prompt MT-Bench grading would use (with the
    reference shown for math, reasoning and coding); a FLASK instance is graded with the plain prompt.
    """
    refs = [
        Reference(
            f"mt_bench:{q.question_id}",
            Question(q.question_id, q.category, q.turns[:1], q.reference[:1]),
            q.reference[0],
        )
        for q in questions
        if q.reference and q.reference[0].strip()
    ]
    refs += [
        Reference(f"flask:{i.idx}", Question(i.idx, "flask", [i.instruction]), i.answer)
        for i in instances
        if i.answer.strip()
    ]
    return refs


def draw_probes(refs: list[Reference], kinds: list[str], n: int, seed: int) -> tuple[list[Probe], dict[str, int]]:
    """Up to `n` references, those most degradations apply to first (ties broken by a seeded draw), each with its
    degraded copies; also how many drawn references each degradation skipped (it did not apply)."""
    ranked = []
    for ref in refs:
        copies = {k: degrade(ref.answer, k, _rng(seed, ref.key, k)) for k in kinds}
        usable = {k: t for k, t in copies.items() if t is not None and t.strip() and t != ref.answer}
        if usable:
            ranked.append((-len(usable), _rng(seed, ref.key).random(), ref.key, ref, usable))
    chosen = sorted(ranked, key=lambda r: r[:3])[:n]
    probes = [Probe(ref, k, text) for *_, ref, usable in chosen for k, text in usable.items()]
    return probes, {k: sum(k not in usable for *_, usable in chosen) for k in kinds}


# --- measurements ----------------------------------------------------------------------------------------------


class Position(BaseModel):
    """Both-order pairwise verdicts: followed the answer (consistent) or the slot (followed_a / followed_b)."""

    pairs: int
    errors: int
    measured: int
    consistent: int
    both_tie: int
    one_tie: int
    followed_a: int
    followed_b: int
    followed_share: float | None
    consistent_share: float | None

    @property
    def followed(self) -> int:
        return self.followed_a + self.followed_b


def _slot(winner: str, candidate_is_a: bool) -> str | None:
    """The slot a verdict chose ('A', 'B', 'tie'), from FastChat's model_1/model_2 naming; None for an error."""
    if winner == "tie":
        return "tie"
    if winner not in ("model_1", "model_2"):
        return None
    return "A" if (winner == "model_1") == candidate_is_a else "B"


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def position_stats(rows: Iterable[dict[str, Any]]) -> Position:
    """From MT-Bench pair rows: g1_winner with model_1 shown as A, g2_winner with it shown as B."""
    counts: Counter[str] = Counter()
    for r in rows:
        counts["pairs"] += 1
        g1, g2 = _slot(r["g1_winner"], True), _slot(r["g2_winner"], False)
        if g1 is None or g2 is None:
            counts["errors"] += 1
        elif g1 == g2 == "tie":
            counts["both_tie"] += 1
        elif "tie" in (g1, g2):
            counts["one_tie"] += 1
        elif g1 == g2:
            counts["followed_a" if g1 == "A" else "followed_b"] += 1
        else:
            counts["consistent"] += 1
    measured = counts["pairs"] - counts["errors"]
    fields = ("pairs", "errors", "consistent", "both_tie", "one_tie", "followed_a", "followed_b")
    return Position(
        **{k: counts[k] for k in fields},
        measured=measured,
        followed_share=_share(counts["followed_a"] + counts["followed_b"], measured),
        consistent_share=_share(counts["consistent"] + counts["both_tie"], measured),
    )


class Spread(BaseModel):
    """How the judge's 1-10 ratings are spread; failures (-1, or outside 1-10) counted apart."""

    ratings: int
    failures: int
    distribution: dict[int, int]
    modal_rating: int | None
    modal_share: float | None
    mean: float | None
    std: float | None


def spread_stats(rows: Iterable[dict[str, Any]]) -> Spread:
    """From MT-Bench single rows (field `score`); a fractional rating counts in its whole number's bin (8.5 as 8)."""
    scores = [r["score"] for r in rows]
    valid = [int(s) for s in scores if 1 <= s <= 10]
    counts = Counter(valid)
    mode, top = max(counts.items(), key=lambda kv: (kv[1], kv[0])) if counts else (None, 0)
    return Spread(
        ratings=len(valid),
        failures=len(scores) - len(valid),
        distribution={k: counts.get(k, 0) for k in range(1, 11)},
        modal_rating=mode,
        modal_share=_share(top, len(valid)),
        mean=round(statistics.fmean(valid), 4) if valid else None,
        std=round(statistics.pstdev(valid), 4) if valid else None,
    )


class KindShare(BaseModel):
    judged: int
    for_reference: int
    share: float | None


class Discrimination(BaseModel):
    """Probes of known quality: how often the reference beat its degraded copy.

    ratings: one probe is one comparison of two ratings (equal ratings do not count as seeing the defect).
    verdicts: one probe is two verdicts, one per order; a tie verdict does not count as seeing the defect.
    """

    method: Literal["ratings", "verdicts"]
    probes: int
    judged: int
    failures: int
    for_reference: int
    ties: int
    for_degraded: int
    share: float | None
    mean_gap: float | None = None
    followed_position: int | None = None
    by_degradation: dict[str, KindShare]


def _tally(outcomes: list[tuple[str, str | None]]) -> tuple[Counter[str], dict[str, KindShare]]:
    """outcomes: (degradation, 'reference' / 'tie' / 'degraded' / None for a failure)."""
    total: Counter[str] = Counter(o or "failed" for _, o in outcomes)
    by_kind = {}
    for kind in dict.fromkeys(k for k, _ in outcomes):
        mine = [o for k, o in outcomes if k == kind and o is not None]
        won = mine.count("reference")
        by_kind[kind] = KindShare(judged=len(mine), for_reference=won, share=_share(won, len(mine)))
    return total, by_kind


def rating_discrimination(rows: list[dict[str, Any]]) -> Discrimination:
    """Probe rows with `degradation`, `reference_rating` and `degraded_rating` (None when the call failed)."""
    outcomes: list[tuple[str, str | None]] = []
    gaps = []
    for r in rows:
        a, b = r["reference_rating"], r["degraded_rating"]
        if a is None or b is None:
            outcomes.append((r["degradation"], None))
            continue
        gaps.append(a - b)
        outcomes.append((r["degradation"], "reference" if a > b else "tie" if a == b else "degraded"))
    total, by_kind = _tally(outcomes)
    return Discrimination(
        method="ratings",
        probes=len(rows),
        judged=len(gaps),
        failures=total["failed"],
        for_reference=total["reference"],
        ties=total["tie"],
        for_degraded=total["degraded"],
        share=_share(total["reference"], len(gaps)),
        mean_gap=round(statistics.fmean(gaps), 4) if gaps else None,
        by_degradation=by_kind,
    )


def verdict_discrimination(rows: list[dict[str, Any]]) -> Discrimination:
    """Probe rows with `degradation` and `verdicts`: [shown reference as A, shown it as B], each 'A', 'B', 'C'
    (tie) or None (failed)."""
    outcomes: list[tuple[str, str | None]] = []
    followed = 0
    for r in rows:
        first, second = r["verdicts"]
        followed += first == second and first in ("A", "B")
        for verdict, reference_slot in ((first, "A"), (second, "B")):
            outcome = {None: None, "C": "tie", reference_slot: "reference"}.get(verdict, "degraded")
            outcomes.append((r["degradation"], outcome))
    total, by_kind = _tally(outcomes)
    judged = len(outcomes) - total["failed"]
    return Discrimination(
        method="verdicts",
        probes=len(rows),
        judged=judged,
        failures=total["failed"],
        for_reference=total["reference"],
        ties=total["tie"],
        for_degraded=total["degraded"],
        share=_share(total["reference"], judged),
        followed_position=followed,
        by_degradation=by_kind,
    )


# --- verdict ---------------------------------------------------------------------------------------------------


class Check(BaseModel):
    name: str
    status: Status
    value: float | None
    limit: float
    measured: int
    sentence: str


class JudgeAudit(BaseModel):
    """What the report shows next to the scores and what the promotion gate reads (`trusted`)."""

    judge: str
    trusted: bool
    summary: str
    checks: list[Check]
    position: Position
    spread: Spread
    discrimination: list[Discrimination]
    probes: int
    skipped_probes: dict[str, int]

    @property
    def flags(self) -> list[str]:
        """The sentences of the checks that keep this judge from being trusted."""
        return [c.sentence for c in self.checks if c.status in ("fail", "not_measured")]


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _check(name: str, status: Status, value: float | None, limit: float, measured: int, sentence: str) -> Check:
    return Check(name=name, status=status, value=value, limit=limit, measured=measured, sentence=sentence)


def position_check(p: Position, cfg: AuditSettings) -> Check:
    """Fails when more verdict pairs chose a slot than `max_position_share`; skipped when nothing was pairwise."""
    limit = cfg.max_position_share
    if p.pairs == 0:
        why = "position not measured: no pairwise judgments by this judge, so no pairwise result rests on it"
        return _check("position", "skipped", None, limit, 0, why)
    if p.measured < cfg.min_measured:
        why = f"position not measured: {p.measured} of {p.pairs} verdict pairs usable (the rest had a failed verdict), "
        return _check(
            "position", "not_measured", p.followed_share, limit, p.measured, why + f"{cfg.min_measured} needed"
        )
    share = p.followed_share or 0.0
    counts = (
        f"{p.followed}/{p.measured} verdicts followed position (slot A in both orders {p.followed_a} times, "
        f"slot B {p.followed_b}; at most {_pct(limit)} allowed)"
    )
    if share > limit:
        return _check("position", "fail", share, limit, p.measured, f"this judge cannot tell answers apart: {counts}")
    return _check("position", "pass", share, limit, p.measured, f"pairwise verdicts follow the answers: {counts}")


def discrimination_check(d: Discrimination, cfg: AuditSettings) -> Check:
    """Fails when the reference beat its degraded copies less often than `min_discrimination`."""
    limit, name = cfg.min_discrimination, f"discrimination_{d.method}"
    if d.judged < cfg.min_measured:
        unit = "probes" if d.method == "ratings" else "verdicts"
        why = f"discrimination ({d.method}) not measured: {d.judged} of {d.judged + d.failures} {unit} judged, "
        return _check(name, "not_measured", d.share, limit, d.judged, why + f"{cfg.min_measured} needed")
    share = d.share or 0.0
    if d.method == "ratings":
        won = f"rated the reference above its degraded copy in {d.for_reference}/{d.judged} probes"
        won += f" (mean rating gap {d.mean_gap:+.2f}; at least {_pct(limit)} needed)"
    else:
        won = f"chose the reference over its degraded copy in {d.for_reference}/{d.judged} verdicts"
        won += f" (at least {_pct(limit)} needed)"
    if share < limit:
        return _check(name, "fail", share, limit, d.judged, f"this judge does not see known defects: it {won}")
    return _check(name, "pass", share, limit, d.judged, f"this judge sees known defects: it {won}")


def spread_check(s: Spread, cfg: AuditSettings) -> Check:
    """Fails when one rating is a larger share of all ratings than `max_modal_share`."""
    limit = cfg.max_modal_share
    if s.ratings < cfg.min_measured or s.modal_rating is None:
        why = f"rating spread not measured: {s.ratings} of {s.ratings + s.failures} ratings valid, "
        why += f"{cfg.min_measured} needed"
        return _check("spread", "not_measured", s.modal_share, limit, s.ratings, why)
    share = s.modal_share or 0.0
    detail = (
        f"{s.distribution[s.modal_rating]}/{s.ratings} ratings are {s.modal_rating} "
        f"(at most {_pct(limit)} allowed; std {s.std:.2f})"
    )
    if share > limit:
        return _check("spread", "fail", share, limit, s.ratings, f"this judge's ratings barely vary: {detail}")
    return _check("spread", "pass", share, limit, s.ratings, f"ratings vary: {detail}")


def audit_judge(
    judge: str,
    position: Position,
    spread: Spread,
    discrimination: list[Discrimination],
    cfg: AuditSettings,
    probes: int = 0,
    skipped_probes: dict[str, int] | None = None,
) -> JudgeAudit:
    """Every check against its threshold; trusted only when none failed and none lacked the data to decide."""
    checks = [
        position_check(position, cfg),
        *(discrimination_check(d, cfg) for d in discrimination),
        spread_check(spread, cfg),
    ]
    trusted = all(c.status in ("pass", "skipped") for c in checks)
    bad = [c.sentence for c in checks if c.status in ("fail", "not_measured")]
    summary = f"judge {judge} passed the audit" if trusted else f"judge {judge} is not trusted: " + "; ".join(bad)
    return JudgeAudit(
        judge=judge,
        trusted=trusted,
        summary=summary,
        checks=checks,
        position=position,
        spread=spread,
        discrimination=discrimination,
        probes=probes,
        skipped_probes=skipped_probes or {},
    )


def load_audit(path: Path) -> JudgeAudit:
    """The audit a `judge_audit` stage wrote (its metrics JSON), for the report and the gate."""
    if not path.exists():
        raise InputError(f"{path} does not exist; run the judge_audit stage first")
    try:
        return JudgeAudit.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise InputError(f"{path}: not a judge audit ({e.errors()[0]['msg']})") from e
