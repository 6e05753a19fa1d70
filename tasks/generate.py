"""Stage `generate`: MT-Bench and FLASK answers of the candidate and the baseline.

MT-Bench answers go to FastChat's model_answer layout (`<model_id>.jsonl`), FLASK answers to `{idx, model_id,
answer}` rows.

Turn 2 is generated with the whole conversation (question 1, the model's own answer, question 2), at MT-Bench's
per-category temperature. Local models generate in batches (turn 1 of a batch, then its turn 2) with
transformers, with llama.cpp (the merged model as an f16 GGUF on the embedded server: what `eval.backend: auto`
picks on the CPU for a base that came from a GGUF; tunefold.eval.gguf_answer), or with one offline vLLM engine
(`eval.backend: vllm`). A `base_url` generates through that
OpenAI-compatible endpoint (via the gateway): every question is its own conversation, `concurrency` of them in
flight, each turn sent as soon as the previous reply is back, so a slow question holds back no other. Answers are
appended as questions finish, so a killed run continues where it stopped, and the file is put in question order
at the end; a changed model or setting starts the file afresh.

With `eval.fanout` on, a local model's answers are split over Dask workers (each loads the model once and answers
every `n`-th item into its own part file); the parts are folded into the answers file in item order, also after a
killed run. Greedy answers are the same as in one process; sampled ones depend on which items share a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunefold.config import CandidateSettings, EndpointConfig, EvalConfig
from tunefold.eval.flask import answer_instances
from tunefold.eval.generation import BATCHING, Answerer, hf_answerer, local_answerer
from tunefold.eval.gguf_answer import answering_backend, served_as
from tunefold.eval.mtbench import TEMPERATURE, answer_row, load_questions
from tunefold.eval.protocol import answer_max_tokens
from tunefold.io import read_appended, write_jsonl
from tunefold.pipeline.fanout import fan_out
from tunefold.pipeline.stage import StageContext, log, stage_main
from tunefold.train.training import file_hash, fingerprint

# one turn through an endpoint: (conversation so far, temperature) -> (text, new tokens, the call succeeded)
Chat = Callable[[list[dict[str, str]], float], tuple[str, int, bool]]


def _fingerprint(cfg: EvalConfig, who: CandidateSettings, questions_file: Path, backend: str) -> str:
    adapter = Path(who.adapter) / "adapter_model.safetensors" if who.adapter else None
    engine: dict[str, str] = {}  # another engine, or other batches, may answer differently
    if not who.base_url:
        engine = {"batching": BATCHING} if backend == "hf" else {"backend": backend}
    return fingerprint(
        who=who.model_dump(exclude={"concurrency"}),  # how many are in flight does not change an answer
        weights=file_hash(adapter) if adapter and adapter.exists() else None,
        questions=file_hash(questions_file),
        max_new_tokens=answer_max_tokens(cfg),
        seed=cfg.seed,
        **engine,
    )


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Item:
    """One thing to answer: its id, the user turns (answered one after another), the sampling temperature."""

    key: int
    turns: list[str]
    temperature: float


def answer_items(
    answer: Answerer,
    items: list[Item],
    path: Path,
    fp: str,
    row: Callable[[Item, list[str]], dict[str, Any]],
    batch_size: int,
    label: str,
) -> dict[str, Any]:
    """Answer every item not yet in `path` (appending as each batch finishes); each turn sees the conversation."""
    _open_answers(path, fp)
    done = _done_keys(path)
    todo = [it for it in items if it.key not in done]
    log.info("%s: %d items, %d already answered", label, len(items), len(items) - len(todo))
    start, tokens, stopped, turns = time.perf_counter(), 0, 0, 0
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        convs: list[list[dict[str, str]]] = [[] for _ in chunk]
        replies: list[list[str]] = [[] for _ in chunk]
        for t in range(max(len(it.turns) for it in chunk)):
            live = [j for j, it in enumerate(chunk) if t < len(it.turns)]
            for j in live:
                convs[j].append({"role": "user", "content": chunk[j].turns[t]})
            outs = answer([convs[j] for j in live], [chunk[j].temperature for j in live])
            for j, (text, n, stop) in zip(live, outs, strict=True):
                convs[j].append({"role": "assistant", "content": text})
                replies[j].append(text)
                tokens, stopped, turns = tokens + n, stopped + stop, turns + 1
        _append(path, [row(it, r) for it, r in zip(chunk, replies, strict=True)])
        log.info("%s: %d/%d answered", label, i + len(chunk), len(todo))
    took = time.perf_counter() - start
    return {
        "items": len(items),
        "generated": len(todo),
        "resumed": len(items) - len(todo),
        "new_tokens": tokens,
        "turns": turns,
        "stopped": stopped,
        "tokens_per_second": round(tokens / took, 1) if todo else None,
        "stopped_fraction": round(stopped / turns, 3) if turns else None,
    }


def answer_concurrently(
    chat: Chat,
    items: list[Item],
    path: Path,
    fp: str,
    row: Callable[[Item, list[str]], dict[str, Any]],
    concurrency: int,
    label: str,
) -> dict[str, Any]:
    """Answer every item not yet in `path` as its own conversation, with `concurrency` conversations in flight.

    An endpoint batches whatever is in flight, so there is no per-batch or per-turn wait here: an item's next
    turn goes out as soon as its previous reply is back, and each finished item is appended at once, in the order
    they finish. Only this thread writes the file, one whole line per item. When all are done the file is
    rewritten in item order, so readers and diffs see the same layout as a batched run.
    """
    _open_answers(path, fp)
    done = _done_keys(path)
    todo = [it for it in items if it.key not in done]
    log.info(
        "%s: %d items, %d already answered, %d in flight at once",
        label,
        len(items),
        len(items) - len(todo),
        concurrency,
    )
    start, tokens, stopped, turns, failed = time.perf_counter(), 0, 0, 0, 0
    written: set[Future[Any]] = set()

    def converse(it: Item) -> tuple[Item, list[str], int, int]:
        conv: list[dict[str, str]] = []
        replies: list[str] = []
        n_tokens = n_ok = 0
        for turn in it.turns:
            conv.append({"role": "user", "content": turn})
            text, n, ok = chat(list(conv), it.temperature)
            conv.append({"role": "assistant", "content": text})
            replies.append(text)
            n_tokens, n_ok = n_tokens + n, n_ok + ok
        return it, replies, n_tokens, n_ok

    def keep(fut: Future[Any]) -> None:
        nonlocal tokens, stopped, turns, failed
        it, replies, n, ok = fut.result()
        _append(path, [row(it, replies)])
        written.add(fut)
        tokens, stopped, turns, failed = tokens + n, stopped + ok, turns + len(replies), failed + len(replies) - ok

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(todo))), thread_name_prefix="answer")
    futures = [pool.submit(converse, it) for it in todo]
    step = max(1, len(todo) // 20)
    try:
        for k, fut in enumerate(as_completed(futures), 1):
            keep(fut)
            if k % step == 0 or k == len(todo):
                log.info("%s: %d/%d answered (%.0fs)", label, k, len(todo), time.perf_counter() - start)
    except BaseException as exc:
        # a dead endpoint: let the conversations in flight end and keep those that finish; Ctrl-C: stop now
        pool.shutdown(wait=not isinstance(exc, KeyboardInterrupt), cancel_futures=True)
        for fut in futures:
            if fut not in written and fut.done() and not fut.cancelled() and fut.exception() is None:
                keep(fut)
        raise
    pool.shutdown()
    if failed:
        log.warning("%s: %d turns failed after retries and were recorded as empty answers", label, failed)
    _put_in_order(path, items)
    took = time.perf_counter() - start
    return {
        "items": len(items),
        "generated": len(todo),
        "resumed": len(items) - len(todo),
        "new_tokens": tokens,
        "turns": turns,
        "stopped": stopped,
        "failed_turns": failed,
        "concurrency": concurrency,
        "tokens_per_second": round(tokens / took, 1) if todo else None,
        "stopped_fraction": round(stopped / turns, 3) if turns else None,
    }


def _in_order(rows: list[dict[str, Any]], items: list[Item]) -> list[dict[str, Any]]:
    """Rows in item order; rows of items not asked for this time (another question subset) keep their place
    at the end."""
    order = {it.key: i for i, it in enumerate(items)}
    return sorted(rows, key=lambda r: order.get(_key(r), len(order)))


def _put_in_order(path: Path, items: list[Item]) -> None:
    rows = read_appended(path)
    ordered = _in_order(rows, items)
    if ordered != rows:
        write_jsonl(path, ordered)  # atomic: a kill leaves the old file, complete


def _open_answers(path: Path, fp: str) -> None:
    """Make `path` hold only answers under fingerprint `fp`, ending on a whole line."""
    marker = path.with_name(f".{path.stem}.fingerprint")
    if not marker.exists() or marker.read_text() != fp:
        path.unlink(missing_ok=True)  # answers of another model or setting: never mix them
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(fp)
    _drop_torn_tail(path)


def _drop_torn_tail(path: Path) -> None:
    """Cut a line left half-written by a killed run, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _key(row: dict[str, Any]) -> int:
    return int(row.get("question_id", row.get("idx", -1)))


def _done_keys(path: Path) -> set[int]:
    return {_key(row) for row in read_appended(path)}


@dataclass(frozen=True)
class Job:
    """One answers file to fill: what to answer, where, under which fingerprint, and what a row looks like."""

    label: str
    items: list[Item]
    path: Path
    fp: str
    row: Callable[[Item, list[str]], dict[str, Any]]


def _parts(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.stem}.part*.jsonl"))


def _fold_parts(job: Job) -> int:
    """Move what shard workers wrote (also of a killed run) into the answers file, in item order; parts of
    another fingerprint are discarded. Returns how many answers moved."""
    _open_answers(job.path, job.fp)
    if not _parts(job.path):
        return 0
    rows = {_key(r): r for r in read_appended(job.path)}
    moved = 0
    for part in _parts(job.path):
        marker = part.with_name(f".{part.stem}.fingerprint")
        if marker.exists() and marker.read_text() == job.fp:
            for r in read_appended(part):
                moved += _key(r) not in rows
                rows.setdefault(_key(r), r)
    write_jsonl(job.path, _in_order(list(rows.values()), job.items))
    for part in _parts(job.path):  # only once their rows are safely in the answers file
        part.with_name(f".{part.stem}.fingerprint").unlink(missing_ok=True)
        part.unlink()
    return moved


def answer_shard(
    shard: int, n: int, cfg: EvalConfig, who: CandidateSettings, base_dir: Path, jobs: list[Job]
) -> list[dict[str, Any]]:
    """One Dask worker's share: load the model once, answer items shard, shard+n, ... of every job."""
    if not cfg.fanout.address:  # local workers share this machine's cores
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    answer = hf_answerer(cfg, base_dir, who.adapter)
    out = []
    for job in jobs:
        part = job.path.with_name(f".{job.path.stem}.part{shard}.jsonl")
        label = f"{job.label} shard {shard + 1}/{n}"
        out.append(answer_items(answer, job.items[shard::n], part, job.fp, job.row, cfg.batch_size, label))
    return out


def _fanned_out(cfg: EvalConfig, who: CandidateSettings, base_dir: Path, jobs: list[Job]) -> dict[str, Any]:
    """Answer a local model's jobs on Dask workers; metrics per job as `answer_items` gives them."""
    for job in jobs:
        _fold_parts(job)  # a killed fanned-out run's answers count as done
    todo = [replace(job, items=[it for it in job.items if it.key not in _done_keys(job.path)]) for job in jobs]
    n = min(cfg.fanout.shards or max(cfg.fanout.workers, 1), max(len(j.items) for j in todo) or 1)
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    if any(j.items for j in todo):
        log.info(
            "%s: answering %d items in %d shards on Dask workers", who.model_id, sum(len(j.items) for j in todo), n
        )
        per_shard = fan_out(
            answer_shard, list(range(n)), cfg.fanout, n=n, cfg=cfg, who=who, base_dir=base_dir, jobs=todo
        )
    else:
        per_shard = []
    took = time.perf_counter() - start
    for i, job in enumerate(jobs):
        _fold_parts(job)
        shards = [s[i] for s in per_shard]
        tokens, turns = sum(s["new_tokens"] for s in shards), sum(s["turns"] for s in shards)
        stopped = sum(s["stopped"] for s in shards)
        generated = sum(s["generated"] for s in shards)
        metrics[job.label] = {
            "items": len(job.items),
            "generated": generated,
            "resumed": len(job.items) - generated,
            "new_tokens": tokens,
            "turns": turns,
            "tokens_per_second": round(tokens / took, 1) if generated else None,
            "stopped": stopped,
            "stopped_fraction": round(stopped / turns, 3) if turns else None,
            "shards": n,
        }
    return metrics


def _endpoint_chat(ctx: StageContext, who: CandidateSettings) -> Chat:
    """One turn of one conversation through the gateway (cache, retries, breaker), `who.concurrency` at most in
    flight to the endpoint."""
    from tunefold.llm import ChatRequest

    cfg = ctx.params.eval
    gw = ctx.gateway
    role = f"candidate:{who.model_id}"
    gw.add_role(
        role,
        EndpointConfig(
            base_url=who.base_url,
            model=who.model,
            max_tokens=answer_max_tokens(cfg),
            seed=cfg.seed,
            concurrency=who.concurrency,
        ),
    )
    gw.endpoint(role)  # connect in this thread, not in a conversation's

    def chat(messages: list[dict[str, str]], temperature: float) -> tuple[str, int, bool]:
        result = gw.chat(role, ChatRequest(messages=messages, temperature=temperature))
        return result.text or "", result.usage.get("completion_tokens", 0), result.ok

    return chat


def plain_base(who: CandidateSettings, base_dir: Path) -> CandidateSettings:
    """`adapter` naming the base model directory means the base itself (as `dpo.init` and a round's `init` do), so
    a baseline can follow `dpo.init` whichever it is; both spellings give the same answers and fingerprint."""
    if who.adapter and Path(who.adapter).resolve() == base_dir.resolve():
        return who.model_copy(update={"adapter": None})
    return who


def _drop_unconfigured(out_dir: Path, model_ids: set[str]) -> None:
    """The answer directories are persisted (a killed run resumes from them) and tracked whole by DVC: answers of a
    model no longer configured (a renamed baseline) would stay in the output forever, so they go, with a log line."""
    for path in sorted(out_dir.glob("*.jsonl")) if out_dir.is_dir() else []:
        if path.stem not in model_ids:
            log.info("removing %s: model %r is no longer eval.candidate or eval.baseline", path, path.stem)
            path.unlink()
            for extra in out_dir.glob(f".{path.stem}.*"):  # its fingerprint and shard parts
                extra.unlink()


def generate(ctx: StageContext, base_dir: Path, mt_dir: Path, flask_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.eval
    mt = cfg.mt_bench
    qfile, ffile = Path(mt.questions), Path(cfg.flask.data)
    questions = load_questions(qfile, Path(mt.references) if mt.references else None, mt.question_ids or None)
    mt_items = [Item(q.question_id, q.turns, TEMPERATURE.get(q.category, 0.7)) for q in questions]
    flask_items = [Item(i.key, [i.instruction], 0.0) for i in answer_instances(cfg.flask)]
    models = [plain_base(who, base_dir) for who in (cfg.candidate, cfg.baseline)]
    for out_dir in (mt_dir, flask_dir):
        _drop_unconfigured(out_dir, {who.model_id for who in models})
    local = [who for who in models if not who.base_url]
    backend = answering_backend(cfg, ctx.params.model.base)
    if backend == "llamacpp" and cfg.fanout.active:  # Dask workers each load the model with transformers
        backend = "hf"
    answered_by = served_as(ctx.params.llm.embedded.slots) if backend == "llamacpp" else backend
    vllm = backend == "vllm" and bool(local)
    if vllm:
        from tunefold.eval.vllm_engine import VllmEngine, require_vllm

        require_vllm()  # now, not after the candidate's answers
        if cfg.fanout.active:
            log.info("eval.backend vllm: one engine in this process answers; eval.fanout still spreads judging")
    metrics: dict[str, Any] = {}
    engine = None
    for who in models:
        jobs = [
            Job(
                f"mt_bench/{who.model_id}",
                mt_items,
                mt_dir / f"{who.model_id}.jsonl",
                _fingerprint(cfg, who, qfile, answered_by),
                lambda it, r, m=who.model_id: answer_row(it.key, m, r, time.time()),
            ),
            Job(
                f"flask/{who.model_id}",
                flask_items,
                flask_dir / f"{who.model_id}.jsonl",
                _fingerprint(cfg, who, ffile, answered_by),
                lambda it, r, m=who.model_id: {"idx": it.key, "model_id": m, "answer": r[0]},
            ),
        ]
        if who.base_url:
            chat = _endpoint_chat(ctx, who)
            for job in jobs:
                metrics[job.label] = answer_concurrently(
                    chat, job.items, job.path, job.fp, job.row, who.concurrency, job.label
                )
        elif vllm:
            if engine is None:  # one engine for every local model: adapters are LoRA requests on it
                engine = VllmEngine(base_dir, cfg, [w.adapter for w in local])
            answer = engine.answerer(who.adapter)
            for job in jobs:  # all of a job's turn 1 in one call, then its turn 2: vLLM schedules the batch
                size = max(len(job.items), 1)
                metrics[job.label] = answer_items(answer, job.items, job.path, job.fp, job.row, size, job.label)
        elif cfg.fanout.active:
            metrics |= _fanned_out(cfg, who, base_dir, jobs)
        else:
            with local_answerer(
                cfg, backend, ctx.params.model, ctx.params.llm.embedded, base_dir, who.adapter
            ) as answer:
                for job in jobs:
                    metrics[job.label] = answer_items(
                        answer, job.items, job.path, job.fp, job.row, cfg.batch_size, job.label
                    )
    if local:  # a local model answered: where and how
        from tunefold.train.device import peak_memory_gb, plan_device

        llamacpp = {"dtype": "float16", "attention": "llama.cpp"} if backend == "llamacpp" else {}  # the export
        metrics["runtime"] = (
            plan_device(cfg.device).describe()
            | llamacpp
            | {
                "backend": backend,
                "peak_gpu_memory_gb": None if vllm else peak_memory_gb(),  # vLLM's engine runs in its own process
            }
        )
    return metrics


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="base model directory")
    p.add_argument("--out", type=Path, required=True, help="MT-Bench model_answer directory (FastChat layout)")
    p.add_argument("--flask-out", type=Path, required=True, help="FLASK answers directory")


def _run(ctx: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    return generate(ctx, args.base, args.out, args.flask_out)


def main(argv: list[str] | None = None) -> int:
    return stage_main("generate", __doc__ or "", _args, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
