"""Answer generation at scale: conversations through an endpoint (in flight together, no batch waiting for its
slowest question, resumable), and what of the vLLM backend runs without a GPU (settings, adapters it can serve)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults import FaultServer
from tunefold.config import Params
from tunefold.errors import InputError
from tunefold.io import read_appended
from tunefold.llm import EndpointRejected
from tunefold.pipeline.stage import StageContext


def _params(tmp: Path, url: str, concurrency: int, questions: list[str], **eval_: Any) -> Params:
    """Candidate and baseline both served at `url` (models cand-model and base-model), two-turn questions whose
    turns start with the given names, two FLASK instructions."""
    qfile, ffile = tmp / "question.jsonl", tmp / "flask.jsonl"
    qfile.write_text(
        "".join(
            json.dumps({"question_id": i, "category": "math", "turns": [f"{q} first", f"{q} second"]}) + "\n"
            for i, q in enumerate(questions)
        )
    )
    ffile.write_text("".join(json.dumps({"idx": i, "instruction": f"flask {i}"}) + "\n" for i in range(2)))
    served = {"base_url": url, "concurrency": concurrency}
    return Params.model_validate(
        {
            "ingest": {"sources": [{"path": "unused.jsonl"}]},
            "eval": {
                "candidate": {"model_id": "cand", "model": "cand-model", **served},
                "baseline": {"model_id": "base", "model": "base-model", **served},
                "mt_bench": {"questions": str(qfile), "references": None},
                "flask": {"data": str(ffile)},
                "max_new_tokens": 16,
                **eval_,
            },
            "llm": {"cache_dir": str(tmp / "cache"), "backoff_base": 0.01, "backoff_max": 0.05},
        }
    )


def test_endpoint_keeps_n_conversations_in_flight_and_a_slow_one_holds_back_none(tmp_path: Path) -> None:
    """With concurrency 3, three requests are at the server at once and never more. The candidate's 'slow'
    question gets no reply to its first turn until every other question has sent its second turn, which can
    only happen without a per-batch or per-turn wait. Each turn 2 carries the model's own turn-1 reply, and the
    answers file comes out in question order."""
    from tasks.generate import generate

    names = ["slow", *(f"q{i}" for i in range(1, 7))]
    others_done = threading.Event()
    waited_out: list[bool] = []

    def route(body: dict[str, Any]) -> str:
        msgs = body["messages"]
        if body["model"] == "cand-model" and msgs[0]["content"].startswith("slow"):
            waited_out.append(not others_done.wait(10))  # held until the others are through (or 10 s)
        else:
            time.sleep(0.2 if len(msgs) == 1 else 0.02)  # first turns overlap: the in-flight count reaches N
            with server.lock:
                finals = {
                    r["body"]["messages"][0]["content"]
                    for r in server.requests
                    if r["body"]["model"] == "cand-model"
                    and len(r["body"]["messages"]) == 3
                    and not r["body"]["messages"][0]["content"].startswith("slow")
                }
            if len(finals) == len(names) - 1:
                others_done.set()
        return "echo"

    with FaultServer(route=route) as server:
        ctx = StageContext("generate", _params(tmp_path, server.base_url, 3, names))
        try:
            metrics = generate(ctx, tmp_path / "unused-base", tmp_path / "mt", tmp_path / "flask")
        finally:
            ctx.close()
    assert waited_out == [False, False], "the slow question was released by the timeout, not by the others"
    assert server.peak_in_flight == 3
    assert len(server.requests) == 2 * (2 * len(names) + 2)  # two models: two turns per question, two FLASK
    for r in server.requests:
        msgs = r["body"]["messages"]
        if len(msgs) == 3:
            assert msgs[1] == {"role": "assistant", "content": "re: " + msgs[0]["content"]}
    for model in ("cand", "base"):
        rows = [json.loads(x) for x in (tmp_path / "mt" / f"{model}.jsonl").read_text().splitlines()]
        assert [r["question_id"] for r in rows] == list(range(len(names)))
        assert [r["choices"][0]["turns"] for r in rows] == [[f"re: {q} first", f"re: {q} second"] for q in names]
        m = metrics[f"mt_bench/{model}"]
        assert (m["generated"], m["resumed"], m["turns"], m["new_tokens"], m["failed_turns"]) == (7, 0, 14, 70, 0)
        assert m["concurrency"] == 3
    assert "runtime" not in metrics  # no local model answered


def test_interrupted_endpoint_run_resumes_without_duplicates(tmp_path: Path) -> None:
    """The endpoint rejects one question while others finish: the run stops with what finished appended. A kill
    mid-write leaves a torn line. The next run asks only for what is missing and ends with every question once,
    in order."""
    from tasks.generate import Item, _endpoint_chat, answer_concurrently
    from tunefold.eval.mtbench import answer_row

    names = [f"q{i}" for i in range(6)]
    items = [Item(i, [f"{q} first", f"{q} second"], 0.0) for i, q in enumerate(names)]
    path = tmp_path / "cand.jsonl"

    def row(it: Item, replies: list[str]) -> dict[str, Any]:
        return answer_row(it.key, "cand", replies, 0.0)

    def run(route: Any) -> tuple[FaultServer, dict[str, Any] | None]:
        with FaultServer(route=route) as server:
            ctx = StageContext("generate", _params(tmp_path, server.base_url, 2, names))
            try:
                chat = _endpoint_chat(ctx, ctx.params.eval.candidate)
                return server, answer_concurrently(chat, items, path, "fp", row, 2, "t")
            except EndpointRejected:
                return server, None
            finally:
                ctx.close()

    def reject_q0(body: dict[str, Any]) -> str:
        if body["messages"][0]["content"].startswith("q0"):
            time.sleep(0.3)
            return "404"
        return "echo"

    _, stopped = run(reject_q0)
    assert stopped is None
    first = [r["question_id"] for r in read_appended(path)]
    assert 0 not in first and len(first) == len(set(first)) and first
    with path.open("a") as f:
        f.write('{"question_id": 0, "choi')  # killed mid-write
    server, metrics = run(lambda body: "echo")
    assert metrics is not None and (metrics["generated"], metrics["resumed"]) == (6 - len(first), len(first))
    asked = {int(r["body"]["messages"][0]["content"][1]) for r in server.requests}
    assert 0 in asked and not asked & set(first)  # only missing questions (finished turns come from the cache)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == list(range(6))
    assert all(r["choices"][0]["turns"] == [f"re: q{r['question_id']} {t}" for t in ("first", "second")] for r in rows)


def test_answers_fingerprint_ignores_concurrency_but_not_the_backend(tmp_path: Path) -> None:
    """Raising concurrency must not throw away answers; switching a local model to another backend must (its
    answers differ)."""
    from tasks.generate import _fingerprint
    from tunefold.config import CandidateSettings, EvalConfig

    q = tmp_path / "q.jsonl"
    q.write_text("{}\n")
    served = CandidateSettings(model_id="c", base_url="http://x/v1", model="m")
    local = CandidateSettings(model_id="c")
    cfg = EvalConfig()
    more = served.model_copy(update={"concurrency": 64})
    assert _fingerprint(cfg, served, q, "hf") == _fingerprint(cfg, more, q, "hf")
    backends = {_fingerprint(cfg, local, q, b) for b in ("hf", "vllm", "llamacpp")}
    assert len(backends) == 3
    assert _fingerprint(cfg, served, q, "hf") == _fingerprint(cfg, served, q, "vllm")  # served: backend unused


def test_an_adapter_naming_the_base_is_the_base_and_unconfigured_answers_leave_the_output(tmp_path: Path) -> None:
    """`adapter: models/base` answers as the plain base (same fingerprint, so its answers resume); a model dropped
    from eval.candidate/eval.baseline leaves no answers behind in the tracked output directories."""
    from tasks.generate import _fingerprint, generate, plain_base
    from tunefold.config import CandidateSettings, EvalConfig

    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    q = tmp_path / "q.jsonl"
    q.write_text("{}\n")
    plain, spelled = CandidateSettings(model_id="b"), CandidateSettings(model_id="b", adapter=str(base))
    assert plain_base(spelled, base) == plain
    assert _fingerprint(EvalConfig(), plain_base(spelled, base), q, "hf") == _fingerprint(EvalConfig(), plain, q, "hf")
    other = CandidateSettings(model_id="b", adapter=str(tmp_path / "models" / "sft"))
    assert plain_base(other, base) == other
    mt, flask = tmp_path / "mt", tmp_path / "flask"
    for d in (mt, flask):
        d.mkdir()
        (d / "old-baseline.jsonl").write_text("{}\n")
        (d / ".old-baseline.fingerprint").write_text("x")
    with FaultServer(route=lambda body: "echo") as server:
        ctx = StageContext("generate", _params(tmp_path, server.base_url, 2, ["q0"]))
        try:
            generate(ctx, base, mt, flask)
        finally:
            ctx.close()
    for d in (mt, flask):
        assert sorted(p.name for p in d.iterdir()) == [
            ".base.fingerprint",
            ".cand.fingerprint",
            "base.jsonl",
            "cand.jsonl",
        ]


def test_backend_setting_is_validated() -> None:
    from pydantic import ValidationError

    from tunefold.config import EvalConfig
    from tunefold.eval.gguf_answer import answering_backend

    assert answering_backend(EvalConfig(), "embedded") == "llamacpp"  # on the CPU, for a base that came from a GGUF
    assert answering_backend(EvalConfig(), "HuggingFaceTB/SmolLM2-135M-Instruct") == "hf"
    assert answering_backend(EvalConfig(backend="hf"), "embedded") == "hf"
    assert answering_backend(EvalConfig(backend="vllm"), "embedded") == "vllm"
    with pytest.raises(ValidationError, match="backend"):
        EvalConfig(backend="tgi")


def test_llamacpp_for_a_base_without_a_gguf_is_a_clear_error_before_loading(tmp_path: Path) -> None:
    """The export takes its tokenizer and template from the base's GGUF: a Hub or checkpoint base has none."""
    from tunefold.config import EmbeddedServerConfig, EvalConfig, ModelConfig
    from tunefold.errors import InputError
    from tunefold.eval.generation import local_answerer
    from tunefold.eval.gguf_answer import answering_backend

    hub = ModelConfig(base="HuggingFaceTB/SmolLM2-135M-Instruct")
    cfg = EvalConfig(backend="llamacpp")
    backend = answering_backend(cfg, hub.base)
    answerer = local_answerer(cfg, backend, hub, EmbeddedServerConfig(), tmp_path / "none", None)
    with pytest.raises(InputError, match=r"model.base is not a GGUF .* set eval.backend to hf"):
        answerer.__enter__()


def test_candidate_settings_are_validated() -> None:
    from pydantic import ValidationError

    from tunefold.config import CandidateSettings

    with pytest.raises(ValidationError, match="concurrency"):
        CandidateSettings(model_id="c", concurrency=0)


def test_vllm_backend_without_vllm_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    """The baseline is local, so vLLM is needed; the stage says so before answering the (served) candidate."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    from tasks.generate import generate

    with FaultServer(default="echo") as server:
        params = _params(tmp_path, server.base_url, 2, ["q0"], backend="vllm", baseline={"model_id": "base"})
        ctx = StageContext("generate", params)
        with pytest.raises(InputError, match=r"eval.backend is 'vllm' but the vllm package is not installed"):
            generate(ctx, tmp_path / "base", tmp_path / "mt", tmp_path / "flask")
        ctx.close()
    assert server.requests == [] and not (tmp_path / "mt").exists()


def test_vllm_request_settings(tmp_path: Path) -> None:
    """Per-conversation sampling (greedy without a seed, sampled with one), every end-of-turn id of the model
    (Llama 3 lists two in generation_config.json), and a max_lora_rank vLLM accepts."""
    from tunefold.eval.vllm_engine import max_lora_rank, model_stop_ids, sampling_settings

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    stops = model_stop_ids(tmp_path, 128001)
    assert stops == [128001, 128009]
    assert model_stop_ids(tmp_path / "none", 2) == [2]
    assert sampling_settings([0.0, 0.7], 64, stops, 5) == [
        {"temperature": 0.0, "max_tokens": 64, "stop_token_ids": stops, "seed": None, "skip_special_tokens": True},
        {"temperature": 0.7, "max_tokens": 64, "stop_token_ids": stops, "seed": 5, "skip_special_tokens": True},
    ]
    assert [max_lora_rank(r) for r in (1, 8, 24, 512)] == [8, 8, 32, 512]
    with pytest.raises(InputError, match="513"):
        max_lora_rank(513)


def test_vllm_serves_one_plain_lora_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    """vLLM gets an adapter as it is; a DoRA adapter, or a stacked DPO adapter of tunefold 0.1.0 (SFT merged under
    it), is refused before the engine starts, with the way out."""
    from tunefold.eval.vllm_engine import lora_rank
    from tunefold.train.models import STACK_FILE

    def adapter(name: str, **cfg: Any) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16} | cfg))
        return tmp_path / name

    assert lora_rank(adapter("plain")) == 8
    assert lora_rank(adapter("pattern", rank_pattern={"q_proj": 32})) == 32
    with pytest.raises(InputError, match="DoRA cannot be served"):
        lora_rank(adapter("dora", use_dora=True))
    stacked = adapter("old_dpo")
    (stacked / STACK_FILE).write_text(json.dumps({"merged_adapters": [str(tmp_path / "plain")]}))
    with pytest.raises(InputError, match="re-run the dpo stage"):
        lora_rank(stacked)
