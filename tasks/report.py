"""Stage `report`: the evaluation report people look at: MT-Bench and FLASK side by side.

Writes `summary.json` (what the promotion gate reads), `report.md` and a self-contained `report.html` (real tables,
inline images) from one document: whether the numbers are comparable to the published protocol and what the judge
audit says of the judge, MT-Bench and FLASK with 95% bootstrap intervals, the baseline beside the candidate (tables
and radars), the paired difference and FastChat's win rates, every judge call without a clean score by kind, the
comparison with the previously evaluated model, and the worst-scored answers with the judge's explanation (and,
given the output of `sentence_scores`, their lowest-scored sentences). Each run is appended to the history file,
from which the next run takes its comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.document import Document, Figure, Heading, Para, Table
from tunefold.eval.flask import DIFFICULTIES, SKILLS
from tunefold.eval.uncertainty import per_question_means
from tunefold.fractal.highlight import lowest_sentences
from tunefold.io import read_json, write_json, write_text
from tunefold.pipeline.stage import StageContext, log, stage_main


def _radar(labels: list[str], series: dict[str, list[float]], top: float, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    angles = np.linspace(0, 2 * np.pi, len(labels), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"polar": True})
    for name, values in series.items():
        ax.plot([*angles, angles[0]], [*values, values[0]], label=name, linewidth=2)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.15)
    ax.set_xticks(angles, labels, fontsize=8)
    ax.set_ylim(0, top)
    ax.set_title(title)
    ax.legend(loc="lower right", bbox_to_anchor=(1.15, -0.1))
    return _png(fig)


def _heatmap(rows: list[str], cols: list[str], values: list[list[float | None]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 6))
    im = ax.imshow(data, vmin=1, vmax=5, cmap="RdYlGn")
    ax.set_xticks(range(len(cols)), [c.replace("_knowledge", "").replace("_", " ") for c in cols], rotation=30)
    ax.set_yticks(range(len(rows)), rows)
    for i, r in enumerate(values):
        for j, v in enumerate(r):
            if v is not None:
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return _png(fig)


def _curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    """Held-out loss against the training step: the SFT rounds (language-model loss) and DPO (its own loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "SFT rounds": {k: v for k, v in curves.items() if k != "dpo"},
        "DPO": {k: v for k, v in curves.items() if k == "dpo"},
    }
    panels = {title: lines for title, lines in panels.items() if lines}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for name, points in lines.items():
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"{title}: held-out loss")
        ax.legend()
    return _png(fig)


def read_curve(path: Path) -> list[tuple[int, float]]:
    """(step, eval_loss) rows of a held-out curve TSV; none for a stage that had nothing held out (header only)."""
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    if not lines or "eval_loss" not in lines[0]:
        return []
    at = lines[0].index("eval_loss")
    return [(int(row[0]), float(row[at])) for row in lines[1:]]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _mean(d: dict[str, Any] | None) -> float | None:
    return d.get("mean") if d else None


def build_summary(
    mt: dict[str, Any],
    fl: dict[str, Any],
    candidate: str,
    baseline: str,
    per_question: dict[str, float],
    audit: dict[str, Any] | None,
) -> dict[str, Any]:
    cand = mt.get(candidate, {})
    overall = cand.get("overall") or {}
    llm = [role for m in (mt, fl) for role in m.get("llm", {}).values()]
    return {
        "candidate": candidate,
        "baseline": baseline,
        "mt_bench": {
            "overall": _mean(overall),
            "interval": overall.get("interval"),
            "turn_1": _mean(cand.get("turn_1")),
            "turn_2": _mean(cand.get("turn_2")),
            "judged": overall.get("judged", 0),
            "failures": overall.get("failures", 0),
            "failure_kinds": overall.get("failure_kinds", {}),
            "categories": {k.split("/", 1)[1]: v for k, v in cand.items() if k.startswith("category/")},
            "baseline_overall": _mean(mt.get(baseline, {}).get("overall")),
            "baseline_categories": {
                k.split("/", 1)[1]: v for k, v in mt.get(baseline, {}).items() if k.startswith("category/")
            },
            "pairwise_vs_baseline": mt.get(f"pairwise_vs_{baseline}"),
            "paired_vs_baseline": mt.get(f"paired_vs_{baseline}"),
            "per_question": per_question,
            "comparability": mt.get("comparability"),
            "settings": mt.get("settings"),
        },
        "flask": {
            "skills": fl.get(candidate, {}).get("skill", {}),
            "baseline_skills": fl.get(baseline, {}).get("skill", {}),
            "hard_skills": fl.get(candidate, {}).get("hard_skill", {}),
            "skill_difficulty": fl.get(candidate, {}).get("skill_difficulty", {}),
            "domains": fl.get(candidate, {}).get("domain", {}),
            "na": fl.get(candidate, {}).get("na", {}),
            "failures": fl.get(candidate, {}).get("failures", fl.get(candidate, {}).get("parse_failures", 0)),
            "failure_kinds": fl.get(candidate, {}).get("failure_kinds", {}),
            "annotation_failures": fl.get("annotation_failures", 0),
            "comparability": fl.get("comparability"),
        },
        "judge": {
            "mt_bench": mt.get("judge"),
            "flask": fl.get("judge"),
            "cost_usd": round(sum(r.get("cost_usd", 0) for r in llm), 6),
            "transport_retries": sum(int(r.get("retries", 0)) for r in llm),
            "truncated_replies": sum(int(r.get("truncated_replies", 0)) for r in llm),
        },
        "audit": audit,
    }


def _setup(summary: dict[str, Any]) -> tuple[Any, ...]:
    """What must match for two evaluations' scores to be compared: judges, protocol settings, question file."""
    mt = summary.get("mt_bench", {})
    return summary.get("judge", {}).get("mt_bench"), summary.get("judge", {}).get("flask"), mt.get("settings")


def _delta(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "n/a"
    return f"{now - before:+.2f}"


def _interval(v: list[float] | None) -> str:
    return f"[{v[0]:.2f}, {v[1]:.2f}]" if v else "n/a"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(kinds.items())) or "none"


def judged_rows(judgments: Path) -> list[dict[str, Any]]:
    files = sorted(judgments.glob("*_single.jsonl")) if judgments.is_dir() else [judgments]
    return [json.loads(x) for f in files if f.exists() for x in f.read_text().splitlines() if x.strip()]


def worst_answers(
    rows: list[dict[str, Any]], answers: Path, questions: Path, candidate: str, n: int = 3
) -> list[dict[str, Any]]:
    """The candidate's lowest-rated turns, with question, answer and the judge's explanation."""
    rows = sorted((r for r in rows if r["model"] == candidate and r["score"] >= 0), key=lambda r: r["score"])[:n]
    qs = {json.loads(x)["question_id"]: json.loads(x) for x in questions.read_text().splitlines() if x.strip()}
    ans = {}
    if answers.exists():
        for x in answers.read_text().splitlines():
            try:
                a = json.loads(x)
                ans[a["question_id"]] = a["choices"][0]["turns"]
            except json.JSONDecodeError:
                continue
    return [
        {
            "question_id": r["question_id"],
            "turn": r["turn"],
            "score": r["score"],
            "question": qs.get(r["question_id"], {}).get("turns", ["", ""])[r["turn"] - 1],
            "answer": ans.get(r["question_id"], ["", ""])[r["turn"] - 1],
            "judgment": r["judgment"],
        }
        for r in rows
    ]


def _exact(x: float | None) -> str:
    """Held-out losses differ in the third decimal: shown with four."""
    return "" if x is None else f"{x:.4f}"


def heldout_summary(sft_dir: Path | None, dpo_path: Path | None) -> dict[str, Any]:
    """Each training stage's held-out numbers (rounds in file order), as the training metrics hold them."""
    out: dict[str, Any] = {}
    files = sorted(sft_dir.glob("*.json")) if sft_dir is not None and sft_dir.is_dir() else []
    for path, name in [*((f, f"sft {f.stem}") for f in files), (dpo_path, "dpo")]:
        if path is not None and path.exists():
            h = read_json(path).get("heldout")
            if h:
                out[name] = h
    return out


def curve_files(sft_dir: Path | None, dpo_path: Path | None) -> dict[str, Path]:
    """The held-out curves the training stages write beside their metrics (`<round>_heldout.tsv`,
    `dpo_heldout.tsv`)."""
    files = sorted(sft_dir.glob("*_heldout.tsv")) if sft_dir is not None and sft_dir.is_dir() else []
    out = {f"sft {f.name.removesuffix('_heldout.tsv')}": f for f in files}
    if dpo_path is not None and (dpo := dpo_path.with_name(f"{dpo_path.stem}_heldout.tsv")).is_file():
        out["dpo"] = dpo
    return out


def disagreement(summary: dict[str, Any]) -> str | None:
    """A sentence when the judge and DPO's held-out numbers point opposite ways about candidate vs baseline (the
    baseline being DPO's starting point), else None."""
    paired, dpo = summary["mt_bench"].get("paired_vs_baseline"), summary.get("heldout", {}).get("dpo")
    if not paired or not dpo or not dpo.get("items") or not summary.get("baseline_is_dpo_start"):
        return None
    judge = 1 if paired["low"] > 0 else -1 if paired["high"] < 0 else 0
    heldout = -1 if dpo["kept"]["loss"] > dpo["start"]["loss"] else 1
    if judge == 0 or judge == heldout:
        return None
    says = "better" if judge > 0 else "worse"
    return (
        f"The judge and the held-out data disagree: MT-Bench rates {summary['candidate']} {says} than "
        f"{summary['baseline']} (paired interval [{paired['low']:+.2f}, {paired['high']:+.2f}]), while DPO's "
        f"held-out loss went from {dpo['start']['loss']} to {dpo['kept']['loss']} on {dpo['items']} pairs it never "
        "trained on. Trust neither alone."
    )


def render(
    summary: dict[str, Any], previous: dict[str, Any] | None, worst: list[dict[str, Any]], images: dict[str, bytes]
) -> Document:
    mt, fl, judge = summary["mt_bench"], summary["flask"], summary["judge"]
    base = summary["baseline"]
    prev_mt = (previous or {}).get("mt_bench", {})
    prev_fl = (previous or {}).get("flask", {}).get("skills", {})
    doc = Document(f"Evaluation report: {summary['candidate']}")
    settings = mt.get("settings") or {}
    doc.add(
        Para(
            f"Protocol {settings.get('protocol', '?')}; judges: MT-Bench {judge['mt_bench']}, FLASK {judge['flask']}; "
            f"judge cost ${judge['cost_usd']:.4f}. "
            + (
                f"Compared with the previous evaluation of {previous.get('candidate')} "
                f"({previous.get('evaluated_at', '?')})."
                if previous
                else "No previous evaluation by the same judge with the same settings to compare with."
            )
        )
    )
    doc.add(Heading("Comparability"))
    for name, record in (("MT-Bench", mt.get("comparability")), ("FLASK", fl.get("comparability"))):
        if record is None:
            doc.add(Para(f"{name}: not recorded (metrics from an older run).", "warning"))
        else:
            doc.add(Para(f"{name}: {record['line']}.", "" if record["comparable"] else "warning"))
    audit = summary.get("audit")
    doc.add(Heading("Judge audit"))
    if audit is None:
        doc.add(Para("The judge was not audited: nothing says whether it can tell answers apart.", "warning"))
    else:
        doc.add(Para(audit["summary"] + ".", "" if audit["trusted"] else "warning"))
        doc.add(
            Table(
                ["check", "status", "value", "limit", "measured", "what it says"],
                [
                    [c["name"], c["status"], c["value"], c["limit"], c["measured"], c["sentence"]]
                    for c in audit["checks"]
                ],
            )
        )
    doc.add(Heading("Held-out validation"))
    held = summary.get("heldout") or {}
    if not held:
        doc.add(Para("No training stage reported held-out numbers: nothing was validated on unseen data.", "warning"))
    else:
        table = [
            [
                name,
                h.get("items", 0),
                _exact(h.get("start", {}).get("loss")),
                _exact(h.get("kept", {}).get("loss")),
                _exact(h.get("kept", {}).get("perplexity")),
                f"{h['start']['reward_accuracy']} -> {h['kept']['reward_accuracy']}"
                if "reward_accuracy" in h.get("kept", {})
                else "",
                h.get("kept_checkpoint", h.get("note", "")),
            ]
            for name, h in held.items()
        ]
        doc.add(
            Table(["stage", "held out", "loss at start", "loss kept", "perplexity", "reward accuracy", "kept"], table)
        )
        if sentence := disagreement(summary):
            doc.add(Para(sentence, "warning"))
    if d := summary.get("decontamination"):
        sets = ", ".join(f"{n} from {k}" for k, n in d["contaminated_by_set"].items()) or "none"
        doc.add(
            Para(
                f"Decontamination: {d['contaminated']} of {d['records_in']} training records contained one of "
                f"{d['eval_questions_checked']} evaluation questions and were quarantined ({sets}); {d['val']} were "
                f"held out ({d['val_pairs']} preference pairs), {d['train']} trained on."
            )
        )
    doc.add(Heading("MT-Bench"))
    rows: list[list[Any]] = [
        [
            "overall",
            mt["overall"],
            _interval(mt.get("interval")),
            mt["baseline_overall"],
            mt["judged"],
            mt["failures"],
            _delta(mt["overall"], prev_mt.get("overall")),
        ],
    ]
    for cat, v in sorted(mt["categories"].items()):
        before = (prev_mt.get("categories", {}).get(cat) or {}).get("mean")
        rows.append(
            [
                cat,
                v["mean"],
                _interval(v.get("interval")),
                _mean(mt.get("baseline_categories", {}).get(cat)),
                v["judged"],
                v.get("failures", v.get("parse_failures", 0)),
                _delta(v["mean"], before),
            ]
        )
    doc.add(Table(["", summary["candidate"], "95% interval", base, "judged", "no clean score", "vs previous"], rows))
    failures = f"{mt['failures']} MT-Bench and {fl['failures']} FLASK judge calls gave no clean score"
    doc.add(
        Para(
            f"{failures} (MT-Bench: {_kinds(mt.get('failure_kinds', {}))}; "
            f"FLASK: {_kinds(fl.get('failure_kinds', {}))}); "
            f"{judge['truncated_replies']} judge replies were cut by max_tokens; {judge['transport_retries']} "
            "requests were sent again after a transport error (HTTP 429/5xx, timeout) before a complete reply.",
            "warning" if mt["failures"] or fl["failures"] else "",
        )
    )
    if paired := mt.get("paired_vs_baseline"):
        doc.add(
            Para(
                f"{summary['candidate']} - {base}, paired over {paired['questions']} questions: "
                f"{paired['difference']:+.2f}, 95% interval [{paired['low']:+.2f}, {paired['high']:+.2f}]"
                + (" (zero inside: no measurable difference)." if paired["low"] <= 0 <= paired["high"] else ".")
            )
        )
    if p := mt.get("pairwise_vs_baseline"):
        doc.add(
            Para(
                f"Pairwise vs {base} (a win only when both orders agree): {p['win']} wins, {p['tie']} ties, "
                f"{p['loss']} losses, {p['error']} without a verdict; win_rate {p.get('win_rate')} (W/(W+T+L)), "
                f"win_rate_adjusted {p.get('win_rate_adjusted')} ((W+T/2)/(W+T+L)), as FastChat names them."
            )
        )
    doc.add(Heading("FLASK skills"))
    table = []
    for skill in SKILLS:
        v = fl["skills"].get(skill)
        if v or skill in fl["na"]:
            table.append(
                [
                    skill,
                    _mean(v),
                    _interval((v or {}).get("interval")),
                    (v or {}).get("n", 0),
                    (fl["baseline_skills"].get(skill) or {}).get("mean"),
                    _delta(_mean(v), (prev_fl.get(skill) or {}).get("mean")),
                    fl["na"].get(skill, 0),
                ]
            )
    doc.add(Table(["skill", "score", "95% interval", "n", base, "vs previous", "N/A"], table))
    doc.add(Para(f"FLASK annotation failures: {fl['annotation_failures']}."))
    if fl["hard_skills"]:
        doc.add(Para("FLASK-HARD: " + ", ".join(f"{k} {v['mean']} (n={v['n']})" for k, v in fl["hard_skills"].items())))
    doc.add(Heading("Plots"))
    captions = {
        "mt_bench_categories.png": f"MT-Bench by category: {summary['candidate']} and {base}",
        "flask_skills.png": f"FLASK by skill: {summary['candidate']} and {base}",
        "flask_skill_difficulty.png": "FLASK skill x difficulty",
        "heldout_loss.png": "Held-out loss of each training stage, from its start (step 0)",
    }
    doc.add(*(Figure(name, png, captions.get(name, name)) for name, png in images.items()))
    if worst:
        doc.add(Heading("Lowest-scored MT-Bench answers"))
        for w in worst:
            doc.add(
                Para(f"Question {w['question_id']}, turn {w['turn']}: score {w['score']}. {w['question']}"),
                Para(f"Answer: {w['answer'][:600]}"),
                Para(f"Judge: {w['judgment'][:600]}"),
            )
            for sent in w.get("lowest_sentences", []):
                doc.add(Para(f"Lowest-scored sentence ({sent['score']:.2f}): {sent['text'][:300]}"))
    return doc


def report(
    ctx: StageContext,
    mt_path: Path,
    fl_path: Path,
    judgments: Path,
    answers: Path,
    out_dir: Path,
    history: Path,
    plots_dir: Path,
    sentence_scores: Path | None = None,
    audit_path: Path | None = None,
    heldout_sft: Path | None = None,
    heldout_dpo: Path | None = None,
    holdout: Path | None = None,
) -> dict[str, Any]:
    cfg = ctx.params.eval
    if not mt_path.exists() or not fl_path.exists():
        raise InputError(f"{mt_path} or {fl_path} missing: run the mt_bench and flask stages first")
    rows = judged_rows(judgments)
    candidate, baseline = cfg.candidate.model_id, cfg.baseline.model_id
    audit = read_json(audit_path) if audit_path is not None and audit_path.exists() else None
    per_question = per_question_means([r for r in rows if r["model"] == candidate])
    summary = build_summary(read_json(mt_path), read_json(fl_path), candidate, baseline, per_question, audit)
    summary["heldout"] = heldout_summary(heldout_sft, heldout_dpo)
    summary["decontamination"] = read_json(holdout) if holdout is not None and holdout.exists() else None
    dpo_start = ctx.params.dpo.init if ctx.params.dpo else None
    summary["baseline_is_dpo_start"] = dpo_start is not None and cfg.baseline.adapter == dpo_start
    summary["evaluated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    past = [json.loads(x) for x in history.read_text().splitlines() if x.strip()] if history.exists() else []
    previous = past[-1] if past else None
    if previous is not None and _setup(previous) != _setup(summary):
        log.info("previous evaluation had another judge or settings: its scores are not compared")
        previous = None
    images: dict[str, bytes] = {}
    mt, fl = summary["mt_bench"], summary["flask"]
    cats = sorted(mt["categories"])
    if cats:
        series = {candidate: [mt["categories"][c]["mean"] or 0 for c in cats]}
        if mt["baseline_categories"]:
            series[baseline] = [_mean(mt["baseline_categories"].get(c)) or 0 for c in cats]
        images["mt_bench_categories.png"] = _radar(cats, series, 10, "MT-Bench by category")
    skills = [s for s in SKILLS if s in fl["skills"]]
    if skills:
        series = {candidate: [fl["skills"][s]["mean"] for s in skills]}
        if fl["baseline_skills"]:
            series[baseline] = [_mean(fl["baseline_skills"].get(s)) or 0 for s in skills]
        images["flask_skills.png"] = _radar(skills, series, 5, "FLASK by skill")
        grid = [[_mean(fl["skill_difficulty"].get(f"{s}|{d}")) for d in DIFFICULTIES] for s in skills]
        images["flask_skill_difficulty.png"] = _heatmap(skills, list(DIFFICULTIES), grid, "FLASK skill x difficulty")
    curves = {name: c for name, path in curve_files(heldout_sft, heldout_dpo).items() if (c := read_curve(path))}
    if curves:
        images["heldout_loss.png"] = _curves(curves)
    worst = worst_answers(rows, answers, Path(cfg.mt_bench.questions), candidate)
    if sentence_scores is not None:
        lowest = lowest_sentences(sentence_scores, candidate)
        for w in worst:
            w["lowest_sentences"] = lowest.get((w["question_id"], w["turn"]), [])
    doc = render(summary, previous, worst, images)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (out_dir / name).write_bytes(data)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.md", doc.markdown())
    write_text(out_dir / "report.html", doc.html())
    write_text(history, "".join(json.dumps(x) + "\n" for x in [*past, summary]))
    write_json(
        plots_dir / "mt_bench_categories.json", [{"category": c, "score": mt["categories"][c]["mean"]} for c in cats]
    )
    write_json(plots_dir / "flask_skills.json", [{"skill": s, "score": fl["skills"][s]["mean"]} for s in skills])
    log.info("report: MT-Bench %s, %d FLASK skills; %s", mt["overall"], len(skills), out_dir)
    return {
        "mt_bench_overall": mt["overall"],
        "mt_bench_interval": mt["interval"],
        "mt_bench_failures": mt["failures"],
        "flask_failures": fl["failures"],
        "flask_skills": {k: v["mean"] for k, v in fl["skills"].items()},
        "judge_cost_usd": summary["judge"]["cost_usd"],
        "judge_trusted": None if audit is None else audit.get("trusted"),
        "mt_bench_comparable": (mt.get("comparability") or {}).get("comparable"),
    }


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mt-bench", type=Path, required=True, help="metrics JSON of the mt_bench stage")
    p.add_argument("--flask", type=Path, required=True, help="metrics JSON of the flask stage")
    p.add_argument("--judgments", type=Path, required=True, help="MT-Bench model_judgment directory")
    p.add_argument("--answers", type=Path, required=True, help="MT-Bench answers of the candidate")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--history", type=Path, required=True, help="JSONL of past evaluations (appended)")
    p.add_argument("--plots", type=Path, required=True, help="directory for the dvc plots data (JSON)")
    p.add_argument("--sentence-scores", type=Path, help="scores.jsonl of the sentence_scores stage (optional)")
    p.add_argument("--audit", type=Path, help="metrics JSON of the judge_audit stage (optional)")
    p.add_argument("--heldout-sft", type=Path, help="directory of the SFT rounds' metrics (their held-out numbers)")
    p.add_argument("--heldout-dpo", type=Path, help="metrics JSON of the dpo stage (its held-out numbers)")
    p.add_argument("--holdout", type=Path, help="metrics JSON of the holdout stage (decontamination counts)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return report(
        ctx,
        args.mt_bench,
        args.flask,
        args.judgments,
        args.answers,
        args.out,
        args.history,
        args.plots,
        args.sentence_scores,
        args.audit,
        args.heldout_sft,
        args.heldout_dpo,
        args.holdout,
    )


def main(argv: list[str] | None = None) -> int:
    return stage_main("report", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
