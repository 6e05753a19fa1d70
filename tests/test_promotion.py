"""The promotion gate's rules on hand-written scores, and the workspace lock."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tunefold.config import GateSettings
from tunefold.cycle.promotion import Scores, decide, heldout_scores
from tunefold.pipeline.lock import WorkspaceLock

GATE = GateSettings(mt_bench_tolerance=0.2, flask_tolerance=0.25, max_failure_rate=0.1)


def scores(
    mt: float | None,
    flask: dict[str, float] | None = None,
    failures: int = 0,
    pairwise: dict | None = None,
    baseline: str | None = None,
    per_question: dict[str, float] | None = None,
    trusted: bool | None = True,
    judge: str = "gpt-4",
) -> Scores:
    return Scores(
        mt,
        20,
        failures,
        flask or {"comprehension": 3.0, "factuality": 3.0},
        10,
        0,
        pairwise,
        baseline,
        per_question or {},
        judge,
        trusted,
        ["32/32 pairwise verdicts followed the answer's position"] if trusted is False else [],
    )


def questions(base: float, shift: float = 0.0, noise: float = 0.0) -> dict[str, float]:
    """Per-question MT-Bench means of 20 questions: a spread around `base`, moved by `shift`, with an
    alternating +-noise that makes a difference uncertain."""
    return {str(q): base + (q % 5) * 0.5 + shift + (noise if q % 2 else -noise) for q in range(20)}


def test_first_model_is_promoted_when_its_judgments_parse() -> None:
    d = decide(scores(5.0), None, GATE, None)
    assert d.promote and "first model" in d.reason
    d = decide(scores(5.0, failures=4), None, GATE, None)  # 4 of 34 calls without a clean score > 10%
    assert not d.promote and d.reason.startswith("rejected by failure_rate: 0.1176")
    assert not decide(scores(None), None, GATE, None).promote  # nothing was scored
    assert decide(scores(5.0, trusted=False), None, GATE, None).promote  # nothing to compare: no judge verdict


def test_clearly_better_challenger_is_promoted_with_every_number_recorded() -> None:
    champion = scores(5.5, per_question=questions(5.0))
    d = decide(scores(6.0, per_question=questions(5.0, shift=0.5, noise=0.1)), champion, GATE, "model-v1")
    assert d.promote and "95% interval [+0.460, +0.540]" in d.reason
    checks = {c.name: c for c in d.checks}
    assert checks["mt_bench_not_worse"].challenger == 6.0 and checks["mt_bench_not_worse"].champion == 5.5
    assert {"flask:comprehension", "flask:factuality", "failure_rate", "judge_trusted", "same_judge"} <= set(checks)


@pytest.mark.parametrize(
    ("challenger", "reason"),
    [
        (scores(5.0, per_question=questions(5.0, shift=-0.5)), "rejected by mt_bench_not_worse"),  # tol 0.2
        (scores(5.2, per_question=questions(5.0, shift=-0.25)), "rejected by mt_bench_not_worse"),  # 0.25 > 0.2
        (scores(7.0, {"comprehension": 3.5, "factuality": 2.7}), "rejected by flask:factuality"),  # -0.3 > 0.25
    ],
)
def test_regressions_beyond_tolerance_are_rejected(challenger: Scores, reason: str) -> None:
    d = decide(challenger, scores(5.5, per_question=questions(5.0)), GATE, "model-v1")
    assert not d.promote and d.reason.startswith(reason)


def test_an_uncertain_difference_is_a_tie_only_pairwise_against_the_champion_breaks() -> None:
    """A higher mean whose paired interval spans zero is not a win: the pairwise judgment against the champion
    decides, and wins against another model say nothing."""
    champion = scores(5.5, per_question=questions(5.0))
    noisy = questions(5.0, shift=0.1, noise=1.5)
    won = scores(5.6, pairwise={"win": 5, "tie": 3, "loss": 2}, baseline="model-v1", per_question=noisy)
    lost = scores(5.6, pairwise={"win": 2, "tie": 3, "loss": 5}, baseline="model-v1", per_question=noisy)
    against_base = scores(5.6, pairwise={"win": 9, "tie": 0, "loss": 0}, baseline="base", per_question=noisy)
    assert decide(won, champion, GATE, "model-v1").promote
    assert not decide(lost, champion, GATE, "model-v1").promote
    d = decide(against_base, champion, GATE, "model-v1")
    assert not d.promote and "no pairwise judgment against the champion" in d.reason
    assert "95% interval [-" in d.reason  # the interval that made it a tie is in the reason


def test_a_judge_that_cannot_tell_answers_apart_decides_nothing() -> None:
    champion = scores(5.5, per_question=questions(5.0))
    blind = scores(9.0, per_question=questions(5.0, shift=3.0), trusted=False)
    d = decide(blind, champion, GATE, "model-v1")
    assert not d.promote and d.reason.startswith("rejected by judge_trusted") and "followed" in d.reason
    unaudited = scores(9.0, per_question=questions(5.0, shift=3.0), trusted=None)
    assert "not audited" in decide(unaudited, champion, GATE, "model-v1").reason
    lenient = GATE.model_copy(update={"require_trusted_judge": False})
    assert decide(blind, champion, lenient, "model-v1").promote
    other_judge = scores(9.0, per_question=questions(5.0, shift=3.0), judge="gpt-4o")
    assert decide(other_judge, champion, GATE, "model-v1").reason.startswith("rejected by same_judge")


def test_a_champion_without_per_question_scores_is_compared_on_means_and_never_clearly_beaten() -> None:
    old = scores(5.5)  # a registry entry written before per-question scores were kept
    d = decide(scores(7.0, per_question=questions(6.0)), old, GATE, "model-v1")
    assert not d.promote and "uncertainty is unknown" in d.reason
    assert decide(scores(5.0, per_question=questions(5.0)), old, GATE, "model-v1").reason.startswith(
        "rejected by mt_bench_not_worse"
    )


def test_lock_admits_one_holder_and_is_freed_when_its_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "cycle.lock"
    with WorkspaceLock(path) as first:
        assert first.acquired
        with WorkspaceLock(path) as second:
            assert not second.acquired and second.holder().startswith("pid ")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from tunefold.pipeline.lock import WorkspaceLock
with WorkspaceLock(__import__("pathlib").Path({str(path)!r})) as l:
    print(l.acquired, flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
    with WorkspaceLock(path) as blocked:
        assert not blocked.acquired
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
    holder.wait()
    with WorkspaceLock(path) as after:
        assert after.acquired


def test_lineage_names_the_exact_base_weights(tmp_path: Path) -> None:
    """The base in lineage is pinned by what prepare_model recorded (here a hub commit), next to the DVC hash of
    the converted checkpoint; the printed chain shows it."""
    from tests.conftest import copy_project
    from tunefold.config import load_params
    from tunefold.cycle.registry import lineage, print_lineage
    from tunefold.io import write_json

    repo = copy_project(tmp_path / "repo")
    commit = "c" * 40
    recorded = {"base": "org/m", "source": "hub", "revision": "v1", "commit": commit, "dtype": "bfloat16"}
    write_json(repo / "metrics/prepare_model.json", recorded | {"parameters": 7})
    base = lineage(repo, load_params(repo / "params.yaml"))["base_model"]
    assert base["commit"] == commit and base["revision"] == "v1" and base["dtype"] == "bfloat16"
    assert "parameters" not in base and "hash" in base
    scores = {"mt_bench": 5.0, "mt_bench_judged": 1, "mt_bench_failures": 0, "flask": {}}
    entry = {"tag": "model-v1", "promoted": True, "reason": "first model", "cycle": "c1", "time": "t"}
    entry |= {"scores": scores, "lineage": lineage(repo, load_params(repo / "params.yaml"))}
    assert f"commit {commit} (revision v1)" in print_lineage(entry)


def test_the_gate_reads_the_judge_audit_from_the_summary() -> None:
    from tunefold.config import AuditSettings
    from tunefold.eval.audit import audit_judge, position_stats, rating_discrimination, spread_stats

    pairs = [{"g1_winner": "model_1", "g2_winner": "model_2"}] * 6  # the same slot in both orders, every time
    ratings = [{"score": 10}] * 8
    probes = [{"degradation": "truncate", "reference_rating": 10, "degraded_rating": 10}] * 5
    audit = audit_judge(
        "tiny", position_stats(pairs), spread_stats(ratings), [rating_discrimination(probes)], AuditSettings()
    )
    summary = {"mt_bench": {"overall": 9.0, "judged": 8}, "judge": {"mt_bench": "tiny"}}
    s = Scores.from_summary(summary | {"audit": audit.model_dump(mode="json")})
    assert s.judge_trusted is False and s.judge == "tiny"
    assert any("6/6 verdicts followed position" in n for n in s.judge_notes)
    assert Scores.from_summary(summary).judge_trusted is None  # not audited


def heldout(
    sft_loss: float | None = None, accuracy: float | None = None, data: str = "split-1", items: int = 8
) -> dict:
    """The training metrics' `heldout` blocks as `heldout_scores` reads them."""

    def block(key: str, value: float | None) -> dict | None:
        return {"heldout": {"items": items, "data_sha256": data, "kept": {key: value}}} if value else None

    return heldout_scores(block("loss", sft_loss), block("reward_accuracy", accuracy))


def test_held_out_numbers_veto_whatever_the_judge_says() -> None:
    better = scores(7.0, per_question=questions(5.0, shift=2.0))  # the judge: clearly better than the champion
    champion = replace(scores(5.0, per_question=questions(5.0)), heldout=heldout(1.50, 0.75))

    def against(sft_loss: float | None, accuracy: float | None, data: str = "split-1", items: int = 8) -> object:
        return decide(replace(better, heldout=heldout(sft_loss, accuracy, data, items)), champion, GATE, "model-v1")

    assert against(1.51, 0.75).promote  # within 0.02 nats and 0.05 accuracy
    d = against(1.53, 0.75)
    assert not d.promote and d.reason.startswith("rejected by heldout_sft_loss: 1.53 vs 1.5")
    d = against(1.40, 0.625)
    assert not d.promote and d.reason.startswith("rejected by heldout_dpo_reward_accuracy: 0.625 vs 0.75")
    # not comparable: another split, or a number missing on one side; said so, and the judge decides
    for d in (against(2.0, 0.1, data="split-2"), against(None, None)):
        assert d.promote and all(c.passed for c in d.checks if c.name.startswith("heldout"))
    notes = [c.note for c in against(2.0, 0.1, data="split-2").checks if c.name.startswith("heldout")]
    assert notes == ["not compared: measured on different held-out data (the split changed with the data)"] * 2
    assert "the challenger has no held-out sft number" in against(None, 0.75).checks[2].note
    # too few items held out to mean anything (one pair's accuracy is 0 or 1): not compared, said so
    few = against(2.0, 0.1, items=GATE.min_heldout_items - 1)
    notes = [c.note for c in few.checks if c.name.startswith("heldout")]
    assert few.promote and len(notes) == 2 and all("fewer than gate.min_heldout_items" in n for n in notes)
