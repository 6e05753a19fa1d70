"""The evaluation report as people read it: rendered by headless Chromium, with real tables and loaded images."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tunefold.config import AuditSettings, Params
from tunefold.eval.audit import audit_judge, position_stats, rating_discrimination, spread_stats
from tunefold.eval.mtbench import aggregate_pairs, aggregate_single, answer_row, combine_orders
from tunefold.eval.uncertainty import paired_interval, per_question_means
from tunefold.pipeline.stage import StageContext

QUESTIONS = ROOT / "data/benchmarks/mt_bench_mini/question.jsonl"


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _inputs(tmp: Path) -> dict[str, Path]:
    """Judgment rows and stage metrics built with the real aggregation code from hand-written ratings."""
    qs = [json.loads(x) for x in QUESTIONS.read_text().splitlines() if x.strip()]
    single = []
    for model, shift in (("candidate", 1), ("base", 0)):
        for i, q in enumerate(qs):
            for turn in (1, 2):
                score = -1 if (model, i, turn) == ("candidate", 0, 2) else 3 + (i + turn + shift) % 6
                status = "truncated" if score < 0 else "ok"
                single.append(
                    {
                        "question_id": q["question_id"],
                        "model": model,
                        "turn": turn,
                        "category": q["category"],
                        "score": score,
                        "judge_status": status,
                        "judgment": f"judge says {score}",
                    }
                )
    pairs = [
        {"g1_winner": g, "g2_winner": "model_1", "result": combine_orders(g, "model_1")}
        for g in ("model_1", "model_2", "tie", "model_1")
    ]
    judgments = tmp / "judgments"
    judgments.mkdir()
    (judgments / "judge_single.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single))
    answers = tmp / "candidate.jsonl"
    answers.write_text(
        "".join(json.dumps(answer_row(q["question_id"], "candidate", ["a1", "a2"], 0)) + "\n" for q in qs)
    )
    by = {m: [r for r in single if r["model"] == m] for m in ("candidate", "base")}
    mt = {m: aggregate_single(rows) for m, rows in by.items()}
    mt |= {
        "judge": "smollm2",
        "pairwise_vs_base": aggregate_pairs(pairs),
        "paired_vs_base": paired_interval(per_question_means(by["candidate"]), per_question_means(by["base"])),
        "settings": {"protocol": "quick"},
        "comparability": {"protocol": "quick", "comparable": False, "line": "not comparable: answers capped"},
        "llm": {"judge": {"cost_usd": 0.0, "retries": 2, "truncated_replies": 1}},
    }
    skills = {"Factuality": {"mean": 3.5, "n": 4, "interval": [3.0, 4.0]}, "Readability": {"mean": 4.0, "n": 4}}
    fl = {
        "judge": "smollm2",
        "candidate": {"skill": skills, "failures": 1, "failure_kinds": {"unparseable": 1}},
        "base": {"skill": {"Factuality": {"mean": 3.0, "n": 4}, "Readability": {"mean": 2.5, "n": 4}}},
    }
    position = position_stats(
        [{"g1_winner": "model_1", "g2_winner": "model_2"}] * 4  # slot A both times: position, not answer
    )
    probes = [{"degradation": "truncate", "reference_rating": 9, "degraded_rating": 9}] * 4
    audit = audit_judge("smollm2", position, spread_stats(single), [rating_discrimination(probes)], AuditSettings(), 4)
    paths = {"mt": tmp / "mt.json", "fl": tmp / "fl.json", "audit": tmp / "audit.json"}
    for key, data in (("mt", mt), ("fl", fl), ("audit", audit.model_dump(mode="json"))):
        paths[key].write_text(json.dumps(data))
    return paths | {"judgments": judgments, "answers": answers}


def test_report_renders_tables_both_models_and_the_judge_audit(tmp_path: Path) -> None:
    from tasks.report import report

    p = _inputs(tmp_path)
    params = Params.model_validate(
        {"ingest": {"sources": [{"path": "x.jsonl"}]}, "eval": {"mt_bench": {"questions": str(QUESTIONS)}}}
    )
    out = tmp_path / "report"
    metrics = report(
        StageContext("report", params),
        p["mt"],
        p["fl"],
        p["judgments"],
        p["answers"],
        out,
        tmp_path / "history.jsonl",
        tmp_path / "plots",
        None,
        p["audit"],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["trusted"] is False and metrics["judge_trusted"] is False
    assert summary["mt_bench"]["failures"] == 1 and summary["mt_bench"]["failure_kinds"] == {"truncated": 1}
    assert (
        len(summary["mt_bench"]["per_question"]) == len(QUESTIONS.read_text().splitlines())
        and summary["mt_bench"]["interval"] is not None
    )
    md = (out / "report.md").read_text()
    assert "**Warning:** judge smollm2 is not trusted: this judge cannot tell answers apart: 4/4 verdicts" in md
    assert "win_rate 0.5 (W/(W+T+L)), win_rate_adjusted 0.75" in md
    assert "1 MT-Bench and 1 FLASK judge calls gave no clean score (MT-Bench: 1 truncated; FLASK: 1 unparseable)" in md
    assert "2 requests were sent again after a transport error" in md

    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium is not installed: `apt-get install chromium` (Debian) renders the report")
    page = (out / "report.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { const ok = [...document.images].filter(i => i.complete "
        "&& i.naturalWidth > 0).length; document.body.setAttribute('data-images', ok + '/' + "
        "document.images.length); });</script></body>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe))
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (tmp_path / "probe.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert re.search(r'data-images="3/3"', dom), dom[:500]  # both radars and the heat map decode
    tables = re.findall(r"<table>.*?</table>", dom, re.S)
    assert len(tables) == 3  # judge audit, MT-Bench, FLASK
    mt_table = tables[1]
    assert "<th>candidate</th>" in mt_table and "<th>base</th>" in mt_table and "95% interval" in mt_table
    assert "|---|" not in dom  # no Markdown shown as text
    assert 'class="warning"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1100,2400",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def test_the_report_shows_held_out_numbers_and_says_when_the_judge_disagrees(tmp_path: Path) -> None:
    from tasks.report import disagreement, read_curve, render

    (tmp_path / "c.tsv").write_text("step\teval_loss\teval_rewards_accuracies\n0\t0.69\t0.0\n2\t0.61\t1.0\n")
    assert read_curve(tmp_path / "c.tsv") == [(0, 0.69), (2, 0.61)]
    (tmp_path / "none.tsv").write_text("step\n")  # a stage with nothing held out writes the header alone
    assert read_curve(tmp_path / "none.tsv") == []

    dpo = {
        "items": 4,
        "start": {"loss": 0.6931, "reward_accuracy": 0.0},
        "kept": {"loss": 0.75, "reward_accuracy": 0.25},
    }
    sft = {"items": 8, "start": {"loss": 2.1, "perplexity": 8.17}, "kept": {"loss": 1.9, "perplexity": 6.69}}
    summary = {
        "candidate": "candidate",
        "baseline": "sft",
        "baseline_is_dpo_start": True,
        "mt_bench": {"paired_vs_baseline": {"difference": 0.8, "low": 0.2, "high": 1.4, "questions": 20}},
        "heldout": {"sft r1": sft | {"kept_checkpoint": "checkpoint-4"}, "dpo": dpo | {"kept_checkpoint": "last step"}},
    }
    sentence = disagreement(summary)
    assert sentence is not None and "rates candidate better than sft" in sentence and "0.6931 to 0.75" in sentence
    # agreement, a tie, another baseline, or nothing held out: no sentence
    agree = summary | {"heldout": {"dpo": dpo | {"kept": dpo["kept"] | {"loss": 0.6}}}}
    tie = summary | {"mt_bench": {"paired_vs_baseline": {"low": -0.3, "high": 1.4}}}
    other = summary | {"baseline_is_dpo_start": False}
    assert [disagreement(s) for s in (agree, tie, other, summary | {"heldout": {}})] == [None] * 4
    full = {
        "mt_bench": {
            "settings": {},
            "comparability": None,
            "overall": 9.0,
            "interval": None,
            "baseline_overall": None,
            "judged": 2,
            "failures": 0,
            "categories": {},
            "paired_vs_baseline": None,
        },
        "flask": {
            "comparability": None,
            "failures": 0,
            "skills": {},
            "na": {},
            "baseline_skills": {},
            "annotation_failures": 0,
            "hard_skills": {},
        },
        "judge": {"mt_bench": "j", "flask": "j", "cost_usd": 0.0, "truncated_replies": 0, "transport_retries": 0},
    }
    counts = {"records_in": 50, "contaminated": 1, "contaminated_by_set": {"mt_bench": 1}, "eval_questions_checked": 47}
    full["decontamination"] = counts | {"val": 8, "val_pairs": 2, "train": 41}
    markdown = render(summary | full | {"mt_bench": full["mt_bench"] | summary["mt_bench"]}, None, [], {}).markdown()
    assert (
        "Decontamination: 1 of 50 training records contained one of 47 evaluation questions and were quarantined "
        "(1 from mt_bench); 8 were held out (2 preference pairs), 41 trained on." in markdown
    )
    assert (
        "## Held-out validation" in markdown
        and "| dpo | 4 | 0.6931 | 0.7500 |  | 0.0 -> 0.25 | last step |" in markdown
    )
    assert "| sft r1 | 8 | 2.1000 | 1.9000 | 6.6900 |  | checkpoint-4 |" in markdown and sentence in markdown
