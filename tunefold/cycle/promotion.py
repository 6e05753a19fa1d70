"""The promotion gate: a retrained model (challenger) replaces the current one (champion) only when the
evaluation says it is not worse. Pure functions over the evaluation summary (`reports/eval/summary.json`), so every
rule is tested on hand-written scores, and every number behind a decision is kept with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunefold.config import GateSettings


@dataclass(frozen=True)
class Scores:
    """What the gate compares, read from one evaluation summary."""

    mt_bench: float | None
    mt_bench_judged: int
    mt_bench_failures: int
    flask: dict[str, float]
    flask_judged: int
    flask_failures: int
    pairwise: dict[str, Any] | None = None  # the candidate vs `baseline`
    baseline: str | None = None

    @classmethod
    def from_summary(cls, s: dict[str, Any]) -> Scores:
        mt, fl = s.get("mt_bench", {}), s.get("flask", {})
        skills = {k: float(v["mean"]) for k, v in fl.get("skills", {}).items() if v.get("mean") is not None}
        return cls(
            mt_bench=mt.get("overall"),
            mt_bench_judged=int(mt.get("judged", 0)),
            mt_bench_failures=int(mt.get("parse_failures", 0)),
            flask=skills,
            flask_judged=sum(int(v.get("n", 0)) for v in fl.get("skills", {}).values()),
            flask_failures=int(fl.get("parse_failures", 0)),
            pairwise=mt.get("pairwise_vs_baseline"),
            baseline=s.get("baseline"),
        )

    @property
    def failure_rate(self) -> float:
        asked = self.mt_bench_judged + self.mt_bench_failures + self.flask_judged + self.flask_failures
        return (self.mt_bench_failures + self.flask_failures) / asked if asked else 1.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    challenger: Any
    champion: Any = None
    limit: Any = None
    note: str = ""


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "checks": [asdict(c) for c in self.checks]}


def decide(challenger: Scores, champion: Scores | None, gate: GateSettings, champion_id: str | None) -> Decision:
    """Apply the gate's rules in order; the first failed rule is the reason for a rejection."""
    checks = [Check("parse_failure_rate", challenger.failure_rate <= gate.max_parse_failure_rate,
                    round(challenger.failure_rate, 4), limit=gate.max_parse_failure_rate)]  # fmt: skip
    checks.append(Check("mt_bench_scored", challenger.mt_bench is not None, challenger.mt_bench_judged))
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    if champion is None:
        return Decision(True, "first model: no champion to beat", checks)
    assert challenger.mt_bench is not None
    delta = challenger.mt_bench - (champion.mt_bench or 0.0)
    checks.append(Check("mt_bench_not_worse", delta >= -gate.mt_bench_tolerance, challenger.mt_bench,
                        champion.mt_bench, -gate.mt_bench_tolerance, f"delta {delta:+.3f}"))  # fmt: skip
    for skill in sorted(set(challenger.flask) & set(champion.flask)):
        d = challenger.flask[skill] - champion.flask[skill]
        checks.append(Check(f"flask:{skill}", d >= -gate.flask_tolerance, challenger.flask[skill],
                            champion.flask[skill], -gate.flask_tolerance, f"delta {d:+.3f}"))  # fmt: skip
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    if delta > gate.tie_margin:
        return Decision(True, f"MT-Bench {delta:+.3f} against the champion, within every tolerance", checks)
    pair = challenger.pairwise if champion_id is not None and challenger.baseline == champion_id else None
    if pair is None:
        checks.append(Check("pairwise_vs_champion", False, None, note="tie on MT-Bench and no pairwise judgment "
                            "against the champion (set eval.baseline to it)"))  # fmt: skip
        return Decision(False, _failed(checks), checks)
    wins, losses = int(pair.get("win", 0)), int(pair.get("loss", 0))
    checks.append(Check("pairwise_vs_champion", wins > losses, f"{wins}W/{pair.get('tie', 0)}T/{losses}L",
                        note="tie on MT-Bench: more pairwise wins than losses needed"))  # fmt: skip
    ok = wins > losses
    return Decision(ok, "tie on MT-Bench, won pairwise against the champion" if ok else _failed(checks), checks)


def _failed(checks: list[Check]) -> str:
    c = next(c for c in checks if not c.passed)
    detail = f": {c.challenger} vs {c.champion} (limit {c.limit})" if c.champion is not None else f": {c.challenger}"
    return f"rejected by {c.name}{detail}" + (f"; {c.note}" if c.note else "")
