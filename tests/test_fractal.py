"""FRACTAL: splitter hard cases, aggregations, pseudo-labels, the scorer against known sentence truth, bad input,
and the `sentence_scores` stage end to end on hand-written judgments with a training-side scorer (no LLM needed)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
import yaml

from tasks.report import build_summary, render
from tasks.sentence_scores import main as sentence_scores_main
from tunefold.config import FractalConfig
from tunefold.errors import InputError
from tunefold.fractal.aggregate import pseudo_labels, soft_aggregate
from tunefold.fractal.auc import auc_roc
from tunefold.fractal.bags import Response, to_bags
from tunefold.fractal.embed import Embedder
from tunefold.fractal.highlight import lowest_sentences
from tunefold.fractal.scorer import BagData, Scorer, mlp, train_scorer
from tunefold.fractal.split import split_sentences, split_spans

ROOT = Path(__file__).resolve().parents[1]


def test_splitter_hard_cases() -> None:
    text = (
        "# Plan\n"
        "Dr. Smith moved to the U.S. in 1990. He paid $3.14 for it, i.e. a bargain! Was it worth it? "
        '"Yes." Then J. R. R. Tolkien wrote e.g. Paris.\n'
        "It wraps\nacross lines... And ends.\n\n"
        "1. First step. Still the first item.\n"
        "2) Second step\n   continued here.\n"
        "   - nested item\n"
        "- bullet\n\n"
        "```python\nx = 1. + 2.\nprint(x)\n```\n"
        "| a | b |\n|---|---|\n"
        "Version 2.0 is out. 42 is the answer."
    )
    assert split_sentences(text) == [
        "# Plan",
        "Dr. Smith moved to the U.S. in 1990.",
        "He paid $3.14 for it, i.e. a bargain!",
        "Was it worth it?",
        '"Yes."',
        "Then J. R. R. Tolkien wrote e.g. Paris.",
        "It wraps\nacross lines...",
        "And ends.",
        "1. First step. Still the first item.",
        "2) Second step\n   continued here.",
        "- nested item",
        "- bullet",
        "```python\nx = 1. + 2.\nprint(x)\n```",
        "| a | b |\n|---|---|",
        "Version 2.0 is out.",
        "42 is the answer.",
    ]
    spans = split_spans(text)
    assert all(text[s.start : s.end] == s.text for s in spans)
    assert [s.kind for s in spans][:2] == ["header", "sentence"] and spans[12].kind == "code"


def test_splitter_edge_cases() -> None:
    assert split_sentences("") == [] and split_sentences("  \n\n ") == []
    assert split_sentences("no final punctuation") == ["no final punctuation"]
    assert split_sentences("Mr. and Mrs. Smith arrived at 5 p.m. on time.") == [
        "Mr. and Mrs. Smith arrived at 5 p.m. on time."
    ]
    # an unclosed code fence runs to the end; lower-case after a period is not a new sentence
    assert split_sentences("Run this:\n```\nrm -rf build. then\nmake") == ["Run this:", "```\nrm -rf build. then\nmake"]
    assert split_sentences("Wait! really? Yes.") == ["Wait! really?", "Yes."]
    assert split_sentences("No. Anna is taller (see Fig. 2). OK.") == ["No.", "Anna is taller (see Fig. 2).", "OK."]


def test_soft_aggregate() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.5, 0.0], [0.7, 0.7, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert torch.allclose(soft_aggregate(scores, mask, "avg", 0.1), torch.tensor([1.6 / 3, 0.7]))
    sharp_max = soft_aggregate(scores, mask, "max", 0.001)
    sharp_min = soft_aggregate(scores, mask, "min", 0.001)
    assert torch.allclose(sharp_max, torch.tensor([0.9, 0.7]), atol=0.01)  # padding (0.0) never counts
    assert torch.allclose(sharp_min, torch.tensor([0.2, 0.7]), atol=0.01)
    smooth = soft_aggregate(scores, mask, "min", 0.1)
    assert (smooth[0] > 0.2) and (smooth[0] < 1.6 / 3)  # between the hard min and the mean
    assert torch.allclose(soft_aggregate(scores, mask, "max", 1e4), torch.tensor([1.6 / 3, 0.7]), atol=1e-3)
    smooth[0].backward()
    assert (scores.grad[0, :3] > 0).all() and scores.grad[0, 3] == 0  # every real sentence gets a gradient


@pytest.mark.parametrize(("how", "odd", "rest"), [("min", 0.2, 0.9), ("max", 0.9, 0.2)])
def test_soft_min_and_max_do_not_drift_with_the_number_of_sentences(how: str, odd: float, rest: float) -> None:
    """One bad sentence spoils a MIN answer however many good ones surround it (and one good one carries a MAX
    answer): at T 0.1 the aggregate stays near the odd sentence from 2 to 40 sentences."""
    lengths = [2, 3, 5, 10, 20, 40]
    scores = torch.full((len(lengths), max(lengths)), rest)
    scores[:, 0] = odd
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    agg = soft_aggregate(scores, mask, how, 0.1)
    assert (agg - odd).abs().max() < 0.03, agg  # the log-n form gave 0.31 (2) ... 0.57 (40) for min
    assert agg.max() - agg.min() < 0.025, agg


@pytest.mark.parametrize(
    ("scores", "label", "how", "expected"),
    [
        ([0.9, 0.6, 0.8], 0, "min", [1, 0, 1]),  # MIN bag labelled 0, none low: the lowest is flipped to 0
        ([0.9, 0.3, 0.2], 0, "min", [1, 0, 0]),  # already agrees: nothing flipped
        ([0.9, 0.3], 1, "min", [1, 1]),  # MIN labelled 1: every sentence good
        ([0.1, 0.4, 0.2], 1, "max", [0, 1, 0]),  # MAX labelled 1, none high: the highest is flipped to 1
        ([0.7, 0.2], 0, "max", [0, 0]),
        ([0.9, 0.8, 0.1, 0.7], 0.5, "avg", [1, 1, 0, 0]),  # exactly round(0.5 * 4) = 2 ones, the highest
        ([0.1, 0.2, 0.3], 0.7, "avg", [0, 1, 1]),
        ([0.6, 0.9], 0.3, "min", [0, 1]),  # a proportion below 0.5 counts as a negative bag
        ([], 1, "min", []),
    ],
)
def test_pseudo_labels(scores: list[float], label: float, how: str, expected: list[int]) -> None:
    assert pseudo_labels(scores, label, how) == expected  # type: ignore[arg-type]


def test_auc() -> None:
    assert auc_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc_roc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc_roc([1, 0], [0.9, 0.1]) == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        auc_roc([1, 1], [0.2, 0.3])


def _synthetic(how: str, bad_share: float, bags: int, seed: int, dim: int = 16) -> tuple[BagData, list[int]]:
    """Gaussian sentence features; a sentence is bad when it lies beyond a hyperplane (the same for every seed);
    response label = MIN or MAX of the sentences' truth; contexts are noise."""
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(0)), dim=0)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cut = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(1 - bad_share)))
    sentences, truth, labels = [], [], []
    for _ in range(bags):
        x = torch.randn(rng.randint(2, 6), dim, generator=gen)
        good = [int(v) for v in (x @ direction < cut)]
        sentences.append(torch.nn.functional.normalize(x, dim=-1))
        truth += good
        labels.append(float(min(good) if how == "min" else max(good)))
    contexts = torch.nn.functional.normalize(torch.randn(bags, dim, generator=gen), dim=-1)
    return BagData.build(sentences, contexts, labels), truth


FAST = FractalConfig(hidden_dim=32, epochs=25, batch_size=16, lambda_cos=0.0, lambda_corr=0.05, temperature=0.1)


@pytest.mark.parametrize(("how", "bad_share"), [("min", 0.25), ("max", 0.7)])
def test_scorer_beats_response_label_baseline(how: str, bad_share: float) -> None:
    train, _ = _synthetic(how, bad_share, 300, seed=1)
    test, truth = _synthetic(how, bad_share, 150, seed=2)
    cfg = FAST.model_copy(update={"aggregation": how})
    scorer, stats = train_scorer(train, cfg)
    fractal = auc_roc(truth, scorer.predict(test).tolist())
    baseline = auc_roc(truth, test.labels[test.bag_of].tolist())
    assert fractal > 0.9 and fractal > baseline + 0.2, (fractal, baseline)
    # the first fit mostly agrees with the judge: a few sentences (not none, not many) need their label flipped
    assert 0 < stats["pseudo_label_flips"] < 0.05 * stats["sentences"] and not stats["degenerate_labels"], stats
    short = cfg.model_copy(update={"epochs": 2})  # deterministic given the seed
    assert torch.equal(train_scorer(train, short)[0].predict(test), train_scorer(train, short)[0].predict(test))


def test_all_same_labels_fall_back_to_priors(caplog: pytest.LogCaptureFixture) -> None:
    data, _ = _synthetic("min", 0.0, 40, seed=3)
    assert set(data.labels.tolist()) == {1.0}
    cfg = FAST.model_copy(update={"lambda_cos": 0.2, "lambda_corr": 0.0, "epochs": 150})
    with caplog.at_level(logging.WARNING, logger="tunefold"):
        scorer, stats = train_scorer(data, cfg)
    assert stats["degenerate_labels"] and "same label" in caplog.text and "pseudo_label_flips" not in stats
    # the scores follow the cosine prior: their ranking agrees with it
    prior = data.prior()
    above = [int(p > prior.median()) for p in prior.tolist()]
    assert auc_roc(above, scorer.predict(data).tolist()) > 0.8
    with pytest.raises(InputError, match="same label"):
        train_scorer(data, cfg.model_copy(update={"lambda_cos": 0.0}))
    unlabelled = BagData(data.sentences, data.contexts, data.bag_of, torch.full_like(data.labels, float("nan")))
    with pytest.raises(InputError, match="no response has a usable judge label"):
        train_scorer(unlabelled, cfg)


# --- the stage, end to end, on hand-written files --------------------------------------------------------------

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Describe a steel water bottle.", "Now as a slogan."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2 + 2?", "And 3 + 3?"]},
    {"question_id": 3, "category": "stem", "turns": ["Why is the sky blue?", "Why are sunsets red?"]},
]
REFERENCES = [
    {
        "question_id": 2,
        "answer_id": "r2",
        "model_id": "ref",
        "tstamp": 0,
        "choices": [{"index": 0, "turns": ["2 + 2 = 4.", "3 + 3 = 6."]}],
    }
]
ANSWERS = {
    "candidate": {
        1: [
            "A steel bottle keeps drinks cold for a day. It is dishwasher safe. Bananas are a kind of berry.",
            "Cold for hours, kind to the planet.",
        ],
        2: ["2 + 2 = 4. Therefore, the answer is 4.", "3 + 3 = 7. The result is 7, as 3 times 3 is 7."],
        3: ["Sunlight scatters off air molecules. Blue light scatters most (Rayleigh scattering). I like cats.", ""],
    },
    "base": {
        1: ["Steel bottles are bottles. The weather is nice today. Water is wet.", "Bottle."],
        2: ["The answer is 5. Math is hard.", "- 3 + 3 = 6\n- checked twice"],
        3: ["The sky is blue because the ocean reflects it. Clouds are white.", "Dust scatters red light."],
    },
}
RATINGS = {
    ("candidate", 1, 1): 6,
    ("candidate", 1, 2): 8,
    ("candidate", 2, 1): 9,
    ("candidate", 2, 2): 2,
    ("candidate", 3, 1): 7,
    ("candidate", 3, 2): 1,
    ("base", 1, 1): 3,
    ("base", 1, 2): -1,
    ("base", 2, 1): 1,
    ("base", 2, 2): 8,
    ("base", 3, 1): 2,
    ("base", 3, 2): 5,
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _workspace(tmp: Path, ratings: dict[tuple[str, int, int], int], answers: dict = ANSWERS) -> Path:
    _jsonl(tmp / "q.jsonl", QUESTIONS)
    _jsonl(tmp / "ref.jsonl", REFERENCES)
    for model, by_q in answers.items():
        _jsonl(
            tmp / "answers" / f"{model}.jsonl",
            [
                {
                    "question_id": q,
                    "answer_id": f"{model}-{q}",
                    "model_id": model,
                    "tstamp": 0,
                    "choices": [{"index": 0, "turns": turns}],
                }
                for q, turns in by_q.items()
            ],
        )
    _jsonl(
        tmp / "judgments" / "judge_single.jsonl",
        [
            {"question_id": q, "model": m, "turn": t, "score": s, "judgment": "...", "category": "x"}
            for (m, q, t), s in ratings.items()
        ],
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval"]["mt_bench"] |= {"questions": str(tmp / "q.jsonl"), "references": str(tmp / "ref.jsonl")}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


# training-side judged answers (what `fractal_pairs` learns from): on-topic answers rated good, answers that drift
# off the question rated poor
TRAINING = [
    ("How do I keep a drink cold?", "Use an insulated steel bottle. Fill it with ice first.", 9),
    ("How do I keep a drink cold?", "Use an insulated bottle. My cat likes cardboard boxes.", 3),
    ("What is 5 + 5?", "5 + 5 = 10.", 9),
    ("What is 5 + 5?", "The answer is 11. Numbers are fun to draw.", 2),
    ("Why is grass green?", "Chlorophyll absorbs red and blue light and reflects green.", 8),
    ("Why is grass green?", "Grass is green. I had pizza for lunch yesterday.", 2),
]


def _training_scorer(tmp: Path) -> Path:
    """The scorer as `fractal_pairs` saves it, trained on TRAINING with the real sentence encoder."""
    cfg = FractalConfig(hidden_dim=32, epochs=100)
    answers = [Response({"id": str(i)}, q, None, a, s / 10) for i, (q, a, s) in enumerate(TRAINING)]
    scorer, _ = train_scorer(to_bags(answers, Embedder(), cfg), cfg)
    scorer.meta |= {"trained_on": f"{len(TRAINING)} hand-written training answers"}
    scorer.save(tmp / "scorer.pt")
    return tmp / "scorer.pt"


def _flask_files(tmp: Path) -> list[str]:
    """Two FLASK instances judged for both models: rated, N/A only, and a parse failure."""
    _jsonl(
        tmp / "flask_judgment" / "instances.jsonl",
        [
            {"idx": 0, "instruction": "Name a prime number.", "answer": "7 is prime."},
            {"idx": 1, "instruction": "Explain tides.", "answer": "The Moon's gravity pulls the oceans."},
        ],
    )
    _jsonl(
        tmp / "flask_judgment" / "judge.jsonl",
        [
            {"idx": 0, "model": "candidate", "scores": {"Correctness": 4.0, "Conciseness": 5.0}},
            {"idx": 0, "model": "base", "scores": {"Correctness": 1.0, "Conciseness": None}},
            {"idx": 1, "model": "candidate", "scores": None},
            {"idx": 1, "model": "base", "scores": {"Correctness": None}},
        ],
    )
    answers = {
        "candidate": ["7 is prime. It has no divisors but 1 and 7.", "The Moon pulls water."],
        "base": ["9 is prime. Primes are odd.", "Tides are waves. Wind makes them."],
    }
    for model, texts in answers.items():
        _jsonl(tmp / "flask_answer" / f"{model}.jsonl", [{"idx": i, "answer": a} for i, a in enumerate(texts)])
    return ["--flask-judgments", str(tmp / "flask_judgment"), "--flask-answers", str(tmp / "flask_answer")]


def _run_stage(tmp: Path, *extra: str) -> int:
    return sentence_scores_main(
        [
            "--params",
            str(tmp / "params.yaml"),
            "--judgments",
            str(tmp / "judgments"),
            "--answers",
            str(tmp / "answers"),
            "--out",
            str(tmp / "out"),
            "--scorer",
            str(tmp / "scorer.pt"),
            "--metrics",
            str(tmp / "m.json"),
            *extra,
        ]
    )


def test_stage_scores_the_benchmark_with_the_training_side_scorer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = _workspace(tmp_path, RATINGS)
    trained = _training_scorer(ws).read_bytes()
    flask = _flask_files(ws)
    with caplog.at_level(logging.INFO, logger="tunefold"):
        assert _run_stage(ws, *flask) == 0
    assert (ws / "scorer.pt").read_bytes() == trained  # applied, never trained on the benchmark
    rows = [json.loads(x) for x in (ws / "out" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == len(RATINGS) + 4  # every judged answer, the empty and the unparsed ones included
    by_key = {(r["model"], r["question_id"], r["turn"]): r for r in rows if r["source"] == "mt_bench"}
    first = by_key[("candidate", 1, 1)]
    assert [s["text"] for s in first["sentences"]] == split_sentences(ANSWERS["candidate"][1][0])
    assert all(0 <= s["score"] <= 1 for r in rows for s in r["sentences"])
    assert first["label"] == 0.0 and by_key[("candidate", 1, 2)]["label"] == 1.0  # 6/10 < 0.7 <= 8/10
    assert first["response_score"] == min(s["score"] for s in first["sentences"])  # aggregation: min
    assert by_key[("base", 1, 2)]["label"] is None and by_key[("base", 1, 2)]["sentences"]  # parse failure: scored
    assert by_key[("candidate", 3, 2)]["sentences"] == []  # empty answer
    # the scores are the saved scorer's (question 1 has no reference: the context is the question alone)
    answer = Response({}, QUESTIONS[0]["turns"][0], None, ANSWERS["candidate"][1][0], None)
    expected = Scorer.load(ws / "scorer.pt").predict(to_bags([answer], Embedder(), FractalConfig())).tolist()
    assert [s["score"] for s in first["sentences"]] == pytest.approx(expected, abs=1e-3)
    metrics = json.loads((ws / "m.json").read_text())
    assert metrics["answers"] == 16 and metrics["parse_failures"] == 3 and metrics["empty_answers"] == 1
    assert metrics["scorer"]["trained_on"] == "6 hand-written training answers"
    rated = [r for r in rows if r["label"] is not None and r["response_score"] is not None]
    assert metrics["response_auc_answers"] == len(rated) == 12  # 16 less 3 unrated less 1 empty
    auc = auc_roc([int(r["label"]) for r in rated], [r["response_score"] for r in rated])
    assert metrics["response_auc"] == round(auc, 4)
    flask_rows = {(r["model"], r["idx"]): r for r in rows if r["source"] == "flask"}
    assert flask_rows[("candidate", 0)]["judge_score"] == 0.9 and flask_rows[("candidate", 0)]["label"] == 1.0
    assert flask_rows[("base", 0)]["label"] == 0.0 and flask_rows[("base", 1)]["label"] is None  # N/A only
    assert "1 judged answer(s) are empty" in caplog.text and "no usable rating" in caplog.text
    # the report's view: the candidate's answers with their lowest-scored sentences
    lowest = lowest_sentences(ws / "out" / "scores.jsonl", "candidate", n=2)
    assert set(lowest) == {(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)}
    assert len(lowest[(1, 1)]) == 2 and lowest[(1, 1)][0]["score"] <= lowest[(1, 1)][1]["score"]
    worst = [
        {
            "question_id": 1,
            "turn": 1,
            "score": 6,
            "question": "q",
            "answer": "a",
            "judgment": "j",
            "lowest_sentences": lowest[(1, 1)],
        }
    ]
    markdown = render(build_summary({}, {}, "candidate", "base", {}, None), None, worst, {}).markdown()
    low = lowest[(1, 1)][0]
    assert f"Lowest-scored sentence ({low['score']:.2f}): {low['text']}" in markdown
    # same inputs, same seed: the same scores
    first_scores = (ws / "out" / "scores.jsonl").read_text()
    assert _run_stage(ws, *flask) == 0 and (ws / "out" / "scores.jsonl").read_text() == first_scores


def test_stage_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = _workspace(tmp_path / "unscored", RATINGS)
    assert _run_stage(ws) == 2
    assert "no sentence scorer; stage fractal_pairs trains it" in capsys.readouterr().err
    meta = {"input_dim": 6, "hidden_dim": 4, "hidden_layers": 1, "embedding_model": "embedded", "aggregation": "min"}
    Scorer(mlp(6, 4, 1), meta).save(ws / "scorer.pt")  # trained on 2-dim embeddings
    assert _run_stage(ws) == 2
    assert "the scorer takes 2-dim embeddings, the encoder 'embedded' gives 384" in capsys.readouterr().err
    empty = {m: {q: ["", ""] for q in (1, 2, 3)} for m in ANSWERS}
    ws = _workspace(tmp_path / "empty", RATINGS, answers=empty)
    Scorer(mlp(6, 4, 1), meta).save(ws / "scorer.pt")
    assert _run_stage(ws) == 2
    assert "all 12 judged answers are empty: there is no sentence to score" in capsys.readouterr().err
    ws = _workspace(tmp_path / "missing", {**RATINGS, ("other", 1, 1): 5})
    Scorer(mlp(6, 4, 1), meta).save(ws / "scorer.pt")
    assert _run_stage(ws) == 2
    assert "judged model 'other' has no answers file" in capsys.readouterr().err
    ws = _workspace(tmp_path / "none", {})
    Scorer(mlp(6, 4, 1), meta).save(ws / "scorer.pt")
    (ws / "judgments" / "judge_single.jsonl").rename(ws / "judgments" / "judge_pair.jsonl")
    assert _run_stage(ws) == 2
    assert "no *_single.jsonl judgment files; run the mt_bench stage first" in capsys.readouterr().err
