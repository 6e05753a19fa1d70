"""Stage `report`: the evaluation report people look at: MT-Bench and FLASK side by side.

Writes `summary.json` (for `dvc metrics show/diff`), `report.md` and a self-contained `report.html` with an
MT-Bench per-category radar, a FLASK per-skill radar and a skill x difficulty heat map, the comparison with the
previously evaluated model (deltas with the number of judged items behind each), the judge's cost and
parse-failure counts, and the worst-scored answers with the judge's explanation (and, given the output of
`sentence_scores`, their lowest-scored sentences). Each run is appended to the history file, from which the next
run takes its comparison.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from tunefold.errors import InputError
from tunefold.eval.flask import DIFFICULTIES, SKILLS
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


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _mean(d: dict[str, Any] | None) -> float | None:
    return d.get("mean") if d else None


def build_summary(mt: dict[str, Any], fl: dict[str, Any], candidate: str, baseline: str) -> dict[str, Any]:
    cand = mt.get(candidate, {})
    pair = mt.get(f"pairwise_vs_{baseline}")
    llm_cost = sum(role.get("cost_usd", 0) for role in mt.get("llm", {}).values()) + sum(
        role.get("cost_usd", 0) for role in fl.get("llm", {}).values()
    )
    return {
        "candidate": candidate,
        "baseline": baseline,
        "mt_bench": {
            "overall": _mean(cand.get("overall")),
            "turn_1": _mean(cand.get("turn_1")),
            "turn_2": _mean(cand.get("turn_2")),
            "judged": (cand.get("overall") or {}).get("judged", 0),
            "parse_failures": (cand.get("overall") or {}).get("parse_failures", 0),
            "categories": {k.split("/", 1)[1]: v for k, v in cand.items() if k.startswith("category/")},
            "baseline_overall": _mean(mt.get(baseline, {}).get("overall")),
            "pairwise_vs_baseline": pair,
        },
        "flask": {
            "skills": fl.get(candidate, {}).get("skill", {}),
            "baseline_skills": fl.get(baseline, {}).get("skill", {}),
            "hard_skills": fl.get(candidate, {}).get("hard_skill", {}),
            "skill_difficulty": fl.get(candidate, {}).get("skill_difficulty", {}),
            "domains": fl.get(candidate, {}).get("domain", {}),
            "na": fl.get(candidate, {}).get("na", {}),
            "parse_failures": fl.get(candidate, {}).get("parse_failures", 0),
            "annotation_failures": fl.get("annotation_failures", 0),
        },
        "judge": {"mt_bench": mt.get("judge"), "flask": fl.get("judge"), "cost_usd": round(llm_cost, 6)},
    }


def _delta(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "n/a"
    return f"{now - before:+.2f}"


def worst_answers(judgments: Path, answers: Path, questions: Path, candidate: str, n: int = 3) -> list[dict[str, Any]]:
    """The candidate's lowest-rated turns, with question, answer and the judge's explanation."""
    files = sorted(judgments.glob("*_single.jsonl")) if judgments.is_dir() else [judgments]
    rows = [json.loads(x) for f in files if f.exists() for x in f.read_text().splitlines() if x.strip()]
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
    return [{"question_id": r["question_id"], "turn": r["turn"], "score": r["score"],
             "question": qs.get(r["question_id"], {}).get("turns", ["", ""])[r["turn"] - 1],
             "answer": ans.get(r["question_id"], ["", ""])[r["turn"] - 1], "judgment": r["judgment"]}
            for r in rows]  # fmt: skip


def render(summary: dict[str, Any], previous: dict[str, Any] | None, worst: list[dict[str, Any]],
           images: dict[str, bytes]) -> tuple[str, str]:  # fmt: skip
    mt, fl = summary["mt_bench"], summary["flask"]
    prev_mt = (previous or {}).get("mt_bench", {})
    prev_fl = (previous or {}).get("flask", {}).get("skills", {})
    md = [f"# Evaluation report: `{summary['candidate']}`", ""]
    md += [f"Judges: MT-Bench `{summary['judge']['mt_bench']}`, FLASK `{summary['judge']['flask']}`; judge cost "
           f"${summary['judge']['cost_usd']:.4f}." + (f" Compared with the previous evaluation of "
           f"`{previous.get('candidate')}` ({previous.get('evaluated_at', '?')})." if previous else
           " No previous evaluation to compare with."), ""]  # fmt: skip
    md += ["## MT-Bench", "", "| | score | judged | parse failures | vs previous |", "|---|---|---|---|---|"]
    md.append(f"| overall | {mt['overall']} | {mt['judged']} | {mt['parse_failures']} | "
              f"{_delta(mt['overall'], prev_mt.get('overall'))} |")  # fmt: skip
    for cat, v in sorted(mt["categories"].items()):
        before = (prev_mt.get("categories", {}).get(cat) or {}).get("mean")
        md.append(f"| {cat} | {v['mean']} | {v['judged']} | {v['parse_failures']} | {_delta(v['mean'], before)} |")
    if mt.get("pairwise_vs_baseline"):
        p = mt["pairwise_vs_baseline"]
        md += ["", f"Pairwise vs the baseline (a win only when both orders agree): {p['win']} wins, {p['tie']} "
               f"ties, {p['loss']} losses, {p['error']} unparseable; win rate {p['win_rate']}."]  # fmt: skip
    md += [
        "",
        "## FLASK skills",
        "",
        "| skill | score | n | baseline | vs previous | N/A |",
        "|---|---|---|---|---|---|",
    ]
    for skill in SKILLS:
        v = fl["skills"].get(skill)
        if v or skill in fl["na"]:
            base = (fl["baseline_skills"].get(skill) or {}).get("mean")
            change = _delta(_mean(v), (prev_fl.get(skill) or {}).get("mean"))
            md.append(
                f"| {skill} | {_mean(v)} | {(v or {}).get('n', 0)} | {base} | {change} | {fl['na'].get(skill, 0)} |"
            )
    md += ["", f"FLASK parse failures: {fl['parse_failures']}; annotation failures: {fl['annotation_failures']}."]
    if fl["hard_skills"]:
        md += ["", "FLASK-HARD (expert level): " + ", ".join(f"{k} {v['mean']} (n={v['n']})"
                                                             for k, v in fl["hard_skills"].items())]  # fmt: skip
    if worst:
        md += ["", "## Lowest-scored MT-Bench answers", ""]
        for w in worst:
            md += [f"**Question {w['question_id']}, turn {w['turn']}: score {w['score']}**", "",
                   f"> {w['question']}", "", f"Answer: {w['answer'][:600]}", "",
                   f"Judge: {w['judgment'][:600]}", ""]  # fmt: skip
            if w.get("lowest_sentences"):
                md += [f"- lowest-scored sentence ({s['score']:.2f}): {s['text'][:300]}"
                       for s in w["lowest_sentences"]] + [""]  # fmt: skip
    md += ["", "Plots: " + ", ".join(f"`{name}`" for name in images)]
    markdown = "\n".join(md) + "\n"
    imgs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(b).decode()}" alt="{n}">'
                   f"<figcaption>{n}</figcaption></figure>" for n, b in images.items())  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tunefold evaluation</title><style>"
            "body{font-family:sans-serif;max-width:1000px;margin:auto}figure{display:inline-block}"
            "img{max-width:480px}pre{white-space:pre-wrap}</style></head><body>"
            f"{imgs}<pre>{html.escape(markdown)}</pre></body></html>")  # fmt: skip
    return markdown, page


def report(ctx: StageContext, mt_path: Path, fl_path: Path, judgments: Path, answers: Path, out_dir: Path,
           history: Path, plots_dir: Path, sentence_scores: Path | None = None) -> dict[str, Any]:  # fmt: skip
    cfg = ctx.params.eval
    if not mt_path.exists() or not fl_path.exists():
        raise InputError(f"{mt_path} or {fl_path} missing: run the mt_bench and flask stages first")
    summary = build_summary(read_json(mt_path), read_json(fl_path), cfg.candidate.model_id, cfg.baseline.model_id)
    summary["evaluated_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    past = [json.loads(x) for x in history.read_text().splitlines() if x.strip()] if history.exists() else []
    previous = past[-1] if past else None
    images: dict[str, bytes] = {}
    cats = sorted(summary["mt_bench"]["categories"])
    if cats:
        series = {summary["candidate"]: [summary["mt_bench"]["categories"][c]["mean"] or 0 for c in cats]}
        images["mt_bench_categories.png"] = _radar(cats, series, 10, "MT-Bench by category")
    skills = [s for s in SKILLS if s in summary["flask"]["skills"]]
    if skills:
        series = {summary["candidate"]: [summary["flask"]["skills"][s]["mean"] for s in skills]}
        if summary["flask"]["baseline_skills"]:
            series[cfg.baseline.model_id] = [(summary["flask"]["baseline_skills"].get(s) or {}).get("mean") or 0
                                             for s in skills]  # fmt: skip
        images["flask_skills.png"] = _radar(skills, series, 5, "FLASK by skill")
        grid = [[(summary["flask"]["skill_difficulty"].get(f"{s}|{d}") or {}).get("mean") for d in DIFFICULTIES]
                for s in skills]  # fmt: skip
        images["flask_skill_difficulty.png"] = _heatmap(skills, list(DIFFICULTIES), grid, "FLASK skill x difficulty")
    worst = worst_answers(judgments, answers, Path(cfg.mt_bench.questions), cfg.candidate.model_id)
    if sentence_scores is not None:
        lowest = lowest_sentences(sentence_scores, cfg.candidate.model_id)
        for w in worst:
            w["lowest_sentences"] = lowest.get((w["question_id"], w["turn"]), [])
    markdown, page = render(summary, previous, worst, images)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (out_dir / name).write_bytes(data)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.md", markdown)
    write_text(out_dir / "report.html", page)
    write_text(history, "".join(json.dumps(x) + "\n" for x in [*past, summary]))
    write_json(plots_dir / "mt_bench_categories.json",
               [{"category": c, "score": summary["mt_bench"]["categories"][c]["mean"]} for c in cats])  # fmt: skip
    write_json(plots_dir / "flask_skills.json",
               [{"skill": s, "score": summary["flask"]["skills"][s]["mean"]} for s in skills])  # fmt: skip
    log.info("report: MT-Bench %s, %d FLASK skills; %s", summary["mt_bench"]["overall"], len(skills), out_dir)
    return {"mt_bench_overall": summary["mt_bench"]["overall"],
            "mt_bench_parse_failures": summary["mt_bench"]["parse_failures"],
            "flask_parse_failures": summary["flask"]["parse_failures"],
            "flask_skills": {k: v["mean"] for k, v in summary["flask"]["skills"].items()},
            "judge_cost_usd": summary["judge"]["cost_usd"]}  # fmt: skip


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mt-bench", type=Path, required=True, help="metrics JSON of the mt_bench stage")
    p.add_argument("--flask", type=Path, required=True, help="metrics JSON of the flask stage")
    p.add_argument("--judgments", type=Path, required=True, help="MT-Bench model_judgment directory")
    p.add_argument("--answers", type=Path, required=True, help="MT-Bench answers of the candidate")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--history", type=Path, required=True, help="JSONL of past evaluations (appended)")
    p.add_argument("--plots", type=Path, required=True, help="directory for the dvc plots data (JSON)")
    p.add_argument("--sentence-scores", type=Path, help="scores.jsonl of the sentence_scores stage (optional)")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return report(ctx, args.mt_bench, args.flask, args.judgments, args.answers, args.out, args.history, args.plots,
                  args.sentence_scores)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return stage_main("report", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
