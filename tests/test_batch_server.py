"""The embedded batching server: same greedy replies batched or alone and as llama-cpp-python's server, JSON mode,
seeded sampling, and clear 400s for what it cannot answer. Real llama.cpp on the SmolLM2 GGUF throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tunefold.config import EmbeddedServerConfig
from tunefold.llm.server import EmbeddedServer
from tunefold.ports import free_port
from tunefold.train.models import embedded_gguf

QUESTIONS = [
    "Why is the sky blue? Answer in two sentences.",
    "Name three uses of a paperclip.",
    "What is 17 times 3? Explain briefly.",
    "Write a haiku about rain.",
]


def _ask(client: object, model: str, question: str, **kw: object) -> object:
    messages = [{"role": "user", "content": question}]
    return client.chat.completions.create(model=model, messages=messages, **kw)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(EmbeddedServerConfig(n_ctx=1024, slots=4, compute="native")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: EmbeddedServer) -> object:
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def test_batched_greedy_replies_are_the_ones_decoded_alone(server: EmbeddedServer, client: object) -> None:
    alone = [_ask(client, server.alias, q, temperature=0, max_tokens=48) for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: _ask(client, server.alias, q, temperature=0, max_tokens=48), QUESTIONS))
    assert [r.choices[0].message.content for r in together] == [r.choices[0].message.content for r in alone]
    for r in alone:
        assert r.usage.completion_tokens <= 48 and r.usage.prompt_tokens > 10
        assert r.choices[0].finish_reason in ("stop", "length")
    assert any(r.choices[0].finish_reason == "length" for r in alone)  # 48 tokens cut at least one


def test_greedy_replies_match_llama_cpp_pythons_own_server(server: EmbeddedServer, client: object) -> None:
    """The server it replaced renders the same chat template, decodes the same GGUF and samples with the same
    chain: the same greedy text and the same seeded draw, in JSON mode too, for prompts of one chunk (longer ones
    are decoded in chunks, with other numbers, so the gateway's cache key tells the two servers apart)."""
    from openai import OpenAI

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(server.gguf), "--model_alias", "ref"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "llama_cpp.server did not start"
                time.sleep(0.2)
        ref = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        rating = {"type": "json_object", "schema": {"type": "object", "properties": {"score": {"type": "integer"}}}}
        cases = [
            (QUESTIONS[0], {"temperature": 0}),
            (QUESTIONS[1], {"temperature": 0.8, "seed": 1}),
            (f"Rate this from 1 to 10 as JSON: {QUESTIONS[2]}", {"temperature": 0, "response_format": rating}),
            (
                f"Rate this from 1 to 10 as JSON: {QUESTIONS[3]}",
                {"temperature": 0.7, "seed": 2, "response_format": rating},
            ),
        ]
        for q, sampling in cases:
            theirs = _ask(ref, "ref", q, max_tokens=40, **sampling)
            ours = _ask(client, server.alias, q, max_tokens=40, **sampling)
            assert ours.choices[0].message.content == theirs.choices[0].message.content
            assert ours.usage.prompt_tokens == theirs.usage.prompt_tokens
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_json_mode_follows_the_schema(server: EmbeddedServer, client: object) -> None:
    schema = {
        "type": "object",
        "properties": {"rating": {"type": "integer"}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["rating", "reason"],
    }
    fmt = {"type": "json_object", "schema": schema}
    with ThreadPoolExecutor(3) as pool:
        replies = list(
            pool.map(
                lambda q: _ask(
                    client, server.alias, f"Rate 1-10: {q}", temperature=0, max_tokens=96, response_format=fmt
                ),
                QUESTIONS[:3],
            )
        )
    for r in replies:
        assert r.choices[0].finish_reason == "stop"
        value = json.loads(r.choices[0].message.content)
        assert set(value) == {"rating", "reason"} and isinstance(value["rating"], int)
    plain = _ask(
        client,
        server.alias,
        "Greet me in JSON.",
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    if plain.choices[0].finish_reason == "stop":  # JSON without a schema: any object, whole when the model ends it
        assert isinstance(json.loads(plain.choices[0].message.content), dict)
    else:
        assert plain.choices[0].finish_reason == "length" and plain.choices[0].message.content.startswith("{")


def test_a_seed_makes_a_sampled_reply_reproducible(server: EmbeddedServer, client: object) -> None:
    def sample(seed: int) -> str:
        return (
            _ask(client, server.alias, QUESTIONS[3], temperature=0.9, seed=seed, max_tokens=32)
            .choices[0]
            .message.content
        )

    assert sample(1) == sample(1)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_what_it_cannot_answer_is_a_clear_400(server: EmbeddedServer, client: object) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="slot holds 1024"):
        _ask(client, server.alias, "word " * 2000, max_tokens=8)
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        _ask(client, server.alias, "hi", stream=True)
    with pytest.raises(openai.BadRequestError, match="response_format type 'grammar'"):
        _ask(client, server.alias, "hi", response_format={"type": "grammar"})
    with pytest.raises(openai.BadRequestError, match="top_p must be a number, not 'high'"):
        _ask(client, server.alias, "hi", extra_body={"top_p": "high"})
    with pytest.raises(openai.BadRequestError, match="seed must be an integer"):
        _ask(client, server.alias, "hi", extra_body={"seed": 1.5})
    bad = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json", timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()
    # null means the default, as in OpenAI's API
    assert _ask(client, server.alias, "hi", temperature=0, max_tokens=4, extra_body={"top_k": None})
    assert httpx.get(f"{server.base_url}/models", timeout=10).json()["data"][0]["id"] == server.alias
    # and it still answers
    assert _ask(client, server.alias, "hi", temperature=0, max_tokens=4).choices[0].message.content


def test_a_reply_does_not_depend_on_the_prompts_before_it() -> None:
    """Prompts sharing long instructions reuse each other's KV chunks, and each reply is still the one a fresh
    engine gives: only whole prompt chunks at fixed positions are kept, which decode to the same numbers."""
    from tunefold.llm.batch_server import ChatModel
    from tunefold.llm.engine import Engine

    rules = " ".join(f"Rule {i}: keep the label short and consistent with the taxonomy." for i in range(12))
    bodies = [
        {"messages": [{"role": "system", "content": rules}, {"role": "user", "content": f"Label: a poem about {w}."}]}
        | {"max_tokens": 24, "temperature": 0}
        for w in ("cats", "rain", "maths", "tea")
    ]
    engine = Engine(embedded_gguf(), slots=2, n_ctx=1024)
    try:
        model = ChatModel(engine, "x")
        shared = [model.chat(b) for b in bodies]
    finally:
        engine.close()
    assert all(r["usage"]["prompt_tokens"] > 150 for r in shared)
    assert sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 128 for r in shared) >= 2
    for body, reply in zip(bodies, shared, strict=True):
        fresh = Engine(embedded_gguf(), slots=1, n_ctx=1024)
        try:
            alone = ChatModel(fresh, "x").chat(body)
        finally:
            fresh.close()
        assert alone["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert alone["choices"][0]["message"]["content"] == reply["choices"][0]["message"]["content"]


def test_a_16_bit_reply_is_the_same_alone_and_in_company() -> None:
    """In bf16 llama.cpp sums a row differently with the rows beside it (bench/RESULTS.md: 11 of 20 replies the
    same alone and batched); the engine decodes such a model's steps one row per slot, so a reply does not depend
    on what else the server is decoding. Q4_1's kernels need no such steps."""
    from tunefold.llm.batch_server import ChatModel
    from tunefold.llm.engine import Engine
    from tunefold.llm.server import file_fingerprint
    from tunefold.llm.widen import widened

    source = embedded_gguf()
    grade = "You grade answers from 1 to 10. Reply as JSON with a short reason and the rating."
    bodies = [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS] + [
        {"messages": [{"role": "system", "content": grade}, {"role": "user", "content": f"Question: {q}"}]}
        for q in QUESTIONS
    ]
    bodies = [b | {"max_tokens": 64, "temperature": 0} for b in bodies]
    engine = Engine(widened(source, "bf16", file_fingerprint(source) + "-bf16"), slots=4, n_ctx=1024)
    try:
        assert engine.fixed_steps
        model = ChatModel(engine, "x")
        alone = [model.chat(b) for b in bodies]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(model.chat, bodies))
        with ThreadPoolExecutor(3) as pool:
            backwards = list(pool.map(model.chat, bodies[::-1]))[::-1]
    finally:
        engine.close()
    texts = [[r["choices"][0]["message"]["content"] for r in rs] for rs in (alone, together, backwards)]
    assert texts[0] == texts[1] == texts[2]
    assert sum(r["usage"]["completion_tokens"] for r in alone) > 200
    native = Engine(source, slots=2, n_ctx=256)
    try:
        assert not native.fixed_steps
    finally:
        native.close()
