"""The promotion gate: a retrained model (challenger) replaces the current one (champion) only when it is not
worse on held-out data (the training stages' own validation, which no judge can sway) and the evaluation says it
is not worse, by a judge that can tell answers apart. Pure functions over the evaluation summary
(`reports/eval/summary.json`) and the training metrics, so every rule is tested on given scores, and every number
behind a decision is kept with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunefold.config import GateSettings
from tunefold.eval.uncertainty import paired_interval


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
    mt_bench_per_question: dict[str, float] = field(default_factory=dict)  # for the paired interval
    judge: str | None = None
    judge_trusted: bool | None = None  # the judge audit's verdict (None: not audited)
    judge_notes: list[str] = field(default_factory=list)
    heldout: dict[str, Any] = field(default_factory=dict)  # `heldout_scores` of the training metrics

    @classmethod
    def from_summary(cls, s: dict[str, Any], heldout: dict[str, Any] | None = None) -> Scores:
        mt, fl = s.get("mt_bench", {}), s.get("flask", {})
        skills = {k: float(v["mean"]) for k, v in fl.get("skills", {}).items() if v.get("mean") is not None}
        audit = s.get("audit") or {}
        return cls(
            mt_bench=mt.get("overall"),
            mt_bench_judged=int(mt.get("judged", 0)),
            mt_bench_failures=int(mt.get("failures", mt.get("parse_failures", 0))),
            flask=skills,
            flask_judged=sum(int(v.get("n", 0)) for v in fl.get("skills", {}).values()),
            flask_failures=int(fl.get("failures", fl.get("parse_failures", 0))),
            pairwise=mt.get("pairwise_vs_baseline"),
            baseline=s.get("baseline"),
            mt_bench_per_question=dict(mt.get("per_question", {})),
            judge=(s.get("judge") or {}).get("mt_bench"),
            judge_trusted=audit.get("trusted"),
            judge_notes=[c["sentence"] for c in audit.get("checks", []) if c["status"] in ("fail", "not_measured")],
            heldout=heldout or {},
        )

    @property
    def failure_rate(self) -> float:
        asked = self.mt_bench_judged + self.mt_bench_failures + self.flask_judged + self.flask_failures
        return (self.mt_bench_failures + self.flask_failures) / asked if asked else 1.0


def heldout_scores(sft: dict[str, Any] | None, dpo: dict[str, Any] | None) -> dict[str, Any]:
    """What the gate compares of the training stages' held-out validation: the last SFT round's kept loss and
    DPO's reward accuracy after training, each with the hash of the data it was measured on."""
    out: dict[str, Any] = {}
    for name, metrics, key, value in (("sft", sft, "loss", "loss"), ("dpo", dpo, "reward_accuracy", "reward_accuracy")):
        h = (metrics or {}).get("heldout") or {}
        if h.get("items") and key in h.get("kept", {}):
            out[name] = {value: h["kept"][key], "data_sha256": h["data_sha256"], "items": h["items"]}
    return out


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
    """Apply the gate's rules in order; the first failed rule is the reason for a rejection.

    Against a champion, the MT-Bench difference is read from a paired bootstrap interval over the questions both
    were judged on: clearly worse (beyond the tolerance) rejects, clearly better promotes, an interval around zero
    is a tie that only a pairwise judgment against the champion can break. A judge the audit did not trust, or a
    different judge from the champion's, decides nothing.
    """
    checks = [
        Check(
            "failure_rate",
            challenger.failure_rate <= gate.max_failure_rate,
            round(challenger.failure_rate, 4),
            limit=gate.max_failure_rate,
        ),
        Check("mt_bench_scored", challenger.mt_bench is not None, challenger.mt_bench_judged),
    ]
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    if champion is None:
        return Decision(True, "first model: no champion to beat", checks)
    checks += heldout_checks(challenger.heldout, champion.heldout, gate)
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    if gate.require_trusted_judge:
        notes = "; ".join(challenger.judge_notes) or "the judge was not audited"
        checks.append(Check("judge_trusted", challenger.judge_trusted is True, challenger.judge_trusted, note=notes))
    checks.append(
        Check(
            "same_judge",
            challenger.judge == champion.judge,
            challenger.judge,
            champion.judge,
            note="scores from different judges are not comparable",
        )
    )
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    assert challenger.mt_bench is not None
    for skill in sorted(set(challenger.flask) & set(champion.flask)):
        d = challenger.flask[skill] - champion.flask[skill]
        checks.append(
            Check(
                f"flask:{skill}",
                d >= -gate.flask_tolerance,
                challenger.flask[skill],
                champion.flask[skill],
                -gate.flask_tolerance,
                f"delta {d:+.3f}",
            )
        )
    paired = paired_interval(challenger.mt_bench_per_question, champion.mt_bench_per_question)
    if paired is None:
        delta = challenger.mt_bench - (champion.mt_bench or 0.0)
        low = high = delta
        note = (
            f"delta {delta:+.3f}; fewer than two questions judged for both to pair: "
            "the difference's uncertainty is unknown"
        )
    else:
        low, high = paired["low"], paired["high"]
        note = (
            f"paired difference {paired['difference']:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}] "
            f"over {paired['questions']} questions"
        )
    checks.append(
        Check(
            "mt_bench_not_worse",
            high >= -gate.mt_bench_tolerance,
            challenger.mt_bench,
            champion.mt_bench,
            -gate.mt_bench_tolerance,
            note,
        )
    )
    if not all(c.passed for c in checks):
        return Decision(False, _failed(checks), checks)
    if paired is not None and low > 0:
        return Decision(True, f"MT-Bench better than the champion ({note}), within every tolerance", checks)
    pair = challenger.pairwise if champion_id is not None and challenger.baseline == champion_id else None
    if pair is None:
        checks.append(
            Check(
                "pairwise_vs_champion",
                False,
                None,
                note=f"MT-Bench cannot tell the two apart ({note}) and there is no pairwise judgment against "
                "the champion (set eval.baseline to it)",
            )
        )
        return Decision(False, _failed(checks), checks)
    wins, losses = int(pair.get("win", 0)), int(pair.get("loss", 0))
    checks.append(
        Check(
            "pairwise_vs_champion",
            wins > losses,
            f"{wins}W/{pair.get('tie', 0)}T/{losses}L",
            note=f"MT-Bench cannot tell the two apart ({note}): more pairwise wins than losses needed",
        )
    )
    ok = wins > losses
    return Decision(ok, "MT-Bench tie, won pairwise against the champion" if ok else _failed(checks), checks)


def heldout_checks(challenger: dict[str, Any], champion: dict[str, Any], gate: GateSettings) -> list[Check]:
    """Held-out loss (SFT) and reward accuracy (DPO) against the champion's, measured on the same held-out data;
    where the data differ, a side has no number or too few items were held out to mean anything, a passing check
    that says it could not compare."""
    rules = (
        ("sft", "loss", "heldout_sft_loss", gate.heldout_loss_tolerance, 1),
        ("dpo", "reward_accuracy", "heldout_dpo_reward_accuracy", gate.reward_accuracy_tolerance, -1),
    )
    checks = []
    for stage, key, name, tolerance, worse in rules:  # worse: +1 when higher is worse (a loss), -1 when lower is
        ch, cp = challenger.get(stage), champion.get(stage)
        if ch is None or cp is None:
            side = "the challenger" if ch is None else "the champion"
            checks.append(Check(name, True, None, note=f"not compared: {side} has no held-out {stage} number"))
        elif ch["data_sha256"] != cp["data_sha256"]:
            note = "not compared: measured on different held-out data (the split changed with the data)"
            checks.append(Check(name, True, ch[key], cp[key], note=note))
        elif ch["items"] < gate.min_heldout_items:
            note = f"not compared: {ch['items']} held-out items, fewer than gate.min_heldout_items"
            checks.append(Check(name, True, ch[key], cp[key], gate.min_heldout_items, note))
        else:
            d = ch[key] - cp[key]
            checks.append(
                Check(
                    name,
                    worse * d <= tolerance,
                    ch[key],
                    cp[key],
                    worse * tolerance,
                    f"delta {d:+.4f} on {ch['items']} held-out items",
                )
            )
    return checks


def _failed(checks: list[Check]) -> str:
    c = next(c for c in checks if not c.passed)
    detail = f": {c.challenger} vs {c.champion} (limit {c.limit})" if c.champion is not None else f": {c.challenger}"
    return f"rejected by {c.name}{detail}" + (f"; {c.note}" if c.note else "")
