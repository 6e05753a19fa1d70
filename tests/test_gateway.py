"""The gateway against the real embedded llama.cpp server, and against injected faults on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.conftest import ROOT
from tests.faults import FaultServer, counting_proxy
from tunefold.config import EndpointConfig, LLMConfig
from tunefold.errors import TunefoldError
from tunefold.llm import ChatRequest, EndpointDown, EndpointRejected, Gateway, parse_rating, parse_verdict
from tunefold.llm.server import EmbeddedServer, embedded_alias


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


def remote(url: str, **kw) -> LLMConfig:
    ep = EndpointConfig(base_url=url, model="fault-model", **kw)
    return LLMConfig(teacher=ep, judge=ep, backoff_base=0.01, backoff_max=2.0)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(LLMConfig(), stage="test", cache_dir=tmp_path_factory.mktemp("cache")) as gw:
        yield gw


# --- real embedded server ----------------------------------------------------------------------------------------


def test_chat_concurrency_and_shared_server(embedded: Gateway) -> None:
    reqs = [ask(f"What is {i} plus {i}? Reply with just the number.", max_tokens=16) for i in range(8)]
    results = embedded.batch("teacher", reqs, desc="sums")
    assert all(r.ok and r.text and not r.cached for r in results)
    assert embedded.endpoint("judge").base_url == embedded.endpoint("teacher").base_url  # one server, two roles
    m = embedded.metrics()["teacher"]
    assert m["calls_sent"] == 8 and m["prompt_tokens"] > 0 and m["completion_tokens"] > 0
    again = embedded.batch("teacher", reqs, desc="sums again")
    assert [r.text for r in again] == [r.text for r in results] and all(r.cached for r in again)
    assert embedded.metrics()["teacher"]["calls_sent"] == 8  # nothing sent the second time


def test_json_output_validates_into_a_model(embedded: Gateway) -> None:
    class Answer(BaseModel):
        city: str
        country: str

    parsed, result = embedded.chat_json(
        "judge", ask("Name the capital of France as JSON with keys city and country.", max_tokens=60), Answer
    )
    assert parsed.ok and isinstance(parsed.value, Answer), parsed.failure
    assert result.provenance["response_format"] == "json_object"
    assert result.provenance["model_fingerprint"].startswith("smollm2")
    assert result.provenance["gateway_version"]


def test_sampled_requests_are_not_cached_unless_seeded(embedded: Gateway) -> None:
    def hits() -> int:  # the role has no counters until its first call (this test may run first on its worker)
        return embedded.metrics().get("teacher", {}).get("cache_hits", 0)

    before = hits()
    for _ in range(2):
        embedded.chat("teacher", ask("Say a random word.", temperature=0.9, max_tokens=8))
    assert hits() == before
    r1 = embedded.chat("teacher", ask("Say a random word.", temperature=0.9, seed=3, max_tokens=8))
    r2 = embedded.chat("teacher", ask("Say a random word.", temperature=0.9, seed=3, max_tokens=8))
    assert r2.cached and r1.text == r2.text


# --- faults ------------------------------------------------------------------------------------------------------


def test_survives_every_fault_then_succeeds(tmp_path: Path) -> None:
    script = ["429:1", "500", "garbage", "truncated", "hang", "503", "slow:0.3"]
    with FaultServer(script) as srv, Gateway(remote(srv.base_url, timeout=1.0, max_retries=8), "t", tmp_path) as gw:
        start = time.monotonic()
        result = gw.chat("judge", ask("rate it"))
        assert result.ok and result.text == "Rating: [[7]]" and result.attempts == len(script)
        m = gw.metrics()["judge"]
        assert m["errors"] == {
            "http_429": 1,
            "http_500": 1,
            "bad_response": 1,
            "connection": 1,
            "timeout": 1,
            "http_503": 1,
        }
        assert m["retries"] == len(script) - 1 and m["failed_requests"] == 0
        gap = srv.requests[1]["t"] - srv.requests[0]["t"]
        assert gap >= 0.95, f"Retry-After: 1 not honoured (retried after {gap:.2f}s)"
        assert time.monotonic() - start < 30


def test_no_retry_on_400_and_stop_on_401(tmp_path: Path) -> None:
    with FaultServer(["400"]) as srv, Gateway(remote(srv.base_url), "t", tmp_path) as gw:
        result = gw.chat("judge", ask("x"))
        assert not result.ok and "HTTP 400" in result.error and len(srv.requests) == 1
    with (
        FaultServer(default="401") as srv,
        Gateway(remote(srv.base_url), "t", tmp_path) as gw,
        pytest.raises(EndpointRejected, match=f"{srv.base_url}.*HTTP 401"),
    ):
        gw.chat("judge", ask("x"))


def test_judge_named_without_connecting_and_a_served_role_needs_its_model(tmp_path: Path) -> None:
    """Naming the judge (for output file names) neither starts the embedded server nor calls an endpoint; a
    `base_url` without `model` is the same clear error whether the role is named or called."""
    with Gateway(LLMConfig(), "t", tmp_path) as gw:
        assert gw.model_name("judge") == embedded_alias(LLMConfig().embedded) and gw._server is None
        assert gw.model_name("judge").startswith("smollm2-135m-instruct.q4_1")
    served = LLMConfig(judge=EndpointConfig(base_url="http://127.0.0.1:9/v1"))
    with Gateway(served, "t", tmp_path) as gw:
        for use in (lambda: gw.model_name("judge"), lambda: gw.chat("judge", ask("x"))):
            with pytest.raises(TunefoldError, match=r"llm\.judge\.model must be set"):
                use()


def test_batch_keeps_going_past_failed_items(tmp_path: Path) -> None:
    script = ["ok", "garbage", "ok", "500", "ok"]
    with FaultServer(script) as srv, Gateway(remote(srv.base_url, max_retries=0, concurrency=1), "t", tmp_path) as gw:
        results = gw.batch("judge", [ask(f"q{i}") for i in range(5)])
        assert [r.ok for r in results] == [True, False, True, False, True]
        assert "unreadable reply" in results[1].error and "HTTP 500" in results[3].error
        assert gw.metrics()["judge"]["failed_requests"] == 2


def test_circuit_breaker_fails_the_stage_naming_the_endpoint(tmp_path: Path) -> None:
    with FaultServer(default="500") as srv:
        cfg = remote(srv.base_url, max_retries=3, concurrency=2).model_copy(update={"breaker_failures": 4})
        with Gateway(cfg, "t", tmp_path) as gw, pytest.raises(EndpointDown, match=srv.base_url):
            gw.batch("judge", [ask(f"q{i}") for i in range(50)])
        assert len(srv.requests) <= 4 + 2  # the threshold, plus requests already in flight


def test_rating_and_verdict_parsers_count_failures(tmp_path: Path) -> None:
    assert parse_rating("Good answer. Rating: [[8.5]]").value == 8.5
    assert parse_rating("Overall quality. Rating: [6]").value == 6  # one bracket pair dropped, still labelled
    for stray in ("Use arr[0] to get it. Fine work.", "As shown in [1], the answer holds.", "I'd say [6] overall"):
        assert parse_rating(stray).kind == "unparseable", stray  # a bare [x] may be an index or a citation
    off = parse_rating("Rating: [[11]]")
    assert (off.failure, off.kind) == ("rating 11 outside 1..10", "out_of_range")
    assert not parse_rating("It is good.").ok and parse_rating(None).kind == "empty"
    assert parse_verdict("... so [[B]]").value == "B"
    assert parse_verdict("[[A]] or maybe [[B]]").failure == "conflicting verdicts"
    script = ["ok:no rating here", "ok:[[9]]"]
    with FaultServer(script) as srv, Gateway(remote(srv.base_url), "t", tmp_path) as gw:
        first, _ = gw.chat_parsed("judge", ask("a"), parse_rating, "rating")
        second, _ = gw.chat_parsed("judge", ask("b"), parse_rating, "rating")
        assert (first.value, first.failure, second.value) == (None, "no [[rating]] in reply", 9.0)
        assert gw.metrics()["judge"]["parse_failures"] == {"rating": 1}


def test_a_reply_cut_by_max_tokens_is_a_failure_never_a_value(tmp_path: Path) -> None:
    """finish_reason "length" (max_tokens reached): the text may hold a rating or a JSON object from a draft the
    judge had not finished, so it is counted as truncated and not parsed; the cache keeps the finish reason."""

    class Rating(BaseModel):
        rating: int

    script = ["cut:Rating: [[7]] but wait, on reflection", 'cut:{"rating": 3}', "ok:Rating: [[7]]"]
    with FaultServer(script) as srv, Gateway(remote(srv.base_url, max_tokens=9), "t", tmp_path) as gw:
        cut, result = gw.chat_parsed("judge", ask("a"), parse_rating, "rating")
        assert (cut.value, cut.kind, result.finish_reason) == (None, "truncated", "length")
        assert cut.failure == "reply cut at max_tokens=9 before it ended"
        cut_json, _ = gw.chat_json("judge", ask("b"), Rating, attempts=1)
        assert (cut_json.value, cut_json.kind) == (None, "truncated")
        whole, _ = gw.chat_parsed("judge", ask("c"), parse_rating, "rating")
        assert whole.value == 7.0
        again, cached = gw.chat_parsed("judge", ask("a"), parse_rating, "rating")
        assert cached.cached and again.kind == "truncated"  # from the cache, still cut
        m = gw.metrics()["judge"]
        assert m["truncated_replies"] == 3 and m["parse_failures"] == {"rating": 2, "Rating": 1}


def test_cache_entries_without_a_finish_reason_are_asked_again(tmp_path: Path) -> None:
    """Entries written before finish reasons were kept cannot say whether the reply was cut: they are re-asked."""
    from tunefold.llm.cache import request_key

    with FaultServer(default="ok:Rating: [[4]]") as srv, Gateway(remote(srv.base_url), "t", tmp_path) as gw:
        ep = gw.endpoint("judge")
        key = request_key(ep.fingerprint, gw._body(ep, ask("old")))
        gw.cache.put(key, ep.fingerprint, {"text": "Rating: [[9]]", "usage": {}})
        parsed, result = gw.chat_parsed("judge", ask("old"), parse_rating, "rating")
        assert (parsed.value, result.cached, len(srv.requests)) == (4.0, False, 1)


def test_the_real_server_reports_a_cut_reply(embedded: Gateway) -> None:
    """llama.cpp's finish_reason for a reply stopped by max_tokens reaches the judge layer as a failure."""
    long = ask("Explain in detail how rain forms, then rate this text: Rating: [[5]]", max_tokens=4, temperature=0.0)
    parsed, result = embedded.chat_parsed("judge", long, parse_rating, "rating")
    assert result.finish_reason == "length" and parsed.kind == "truncated"
    short = embedded.chat("judge", ask("Reply with the single word: yes", max_tokens=64, temperature=0.0))
    assert short.finish_reason == "stop"


def test_structured_output_retries_then_records_typed_failure(tmp_path: Path) -> None:
    class Tag(BaseModel):
        task: str

    with FaultServer(["ok:not json", 'ok:{"task": "math"}']) as srv, Gateway(remote(srv.base_url), "t", tmp_path) as gw:
        parsed, _ = gw.chat_json("teacher", ask("tag"), Tag)
        assert parsed.value == Tag(task="math") and parsed.retries == 1  # the value came from a re-ask
        assert srv.requests[0]["body"]["response_format"] == {"type": "json_object"}
        assert srv.requests[1]["body"]["seed"] == 1  # the retry samples, with a seed so it stays cacheable
        assert gw.metrics()["teacher"]["parse_retries"] == 1
    with FaultServer(default='ok:{"wrong": 1}') as srv, Gateway(remote(srv.base_url), "t", tmp_path / "2") as gw:
        parsed, _ = gw.chat_json("teacher", ask("tag"), Tag, attempts=3)
        assert (parsed.value, parsed.kind, parsed.retries) == (None, "unparseable", 2)
        assert "does not match Tag" in parsed.failure
        assert len(srv.requests) == 3 and gw.metrics()["teacher"]["parse_failures"] == {"Tag": 1}


# --- resume, processes, secrets ----------------------------------------------------------------------------------

BATCH_SCRIPT = """
import json, sys
from tunefold.config import EndpointConfig, LLMConfig
from tunefold.llm import ChatRequest, Gateway
ep = EndpointConfig(base_url=sys.argv[1], model=sys.argv[2], concurrency=1, max_tokens=24)
with Gateway(LLMConfig(teacher=ep), stage="resume", cache_dir=sys.argv[3]) as gw:
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Write one word that rhymes with number {i}."}])
            for i in range(int(sys.argv[4]))]
    out = gw.batch("teacher", reqs)
    print(json.dumps({"ok": sum(r.ok for r in out), "metrics": gw.metrics()["teacher"]}))
"""


def test_killed_batch_resumes_without_resending(tmp_path: Path) -> None:
    from tunefold.config import EmbeddedServerConfig

    n = 12
    server = EmbeddedServer(EmbeddedServerConfig()).start()
    try:
        with counting_proxy(server.base_url) as proxy:
            args = [sys.executable, "-c", BATCH_SCRIPT, proxy["base_url"], server.alias, str(tmp_path), str(n)]
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while proxy["count"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            first_run = proxy["count"]
            assert 5 <= first_run < n
            proxy["count"] = 0
            out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            assert summary["ok"] == n
            finished = summary["metrics"]["cache_hits"]
            assert finished >= first_run - 1  # at most the one request in flight at the kill was lost
            assert proxy["count"] == n - finished == summary["metrics"]["calls_sent"]
    finally:
        server.stop()


SERVER_SCRIPT = """
import os, sys, time
from tunefold.config import LLMConfig
from tunefold.llm import Gateway
with Gateway(LLMConfig(), stage="orphans", cache_dir=sys.argv[2]) as gw:
    gw.endpoint("teacher")
    print(gw._server.pid, flush=True)
    if sys.argv[1] == "error":
        raise RuntimeError("boom")
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.parametrize("how", ["error", "sigint", "sigkill"])
def test_embedded_server_never_outlives_the_run(tmp_path: Path, how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, how, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert _alive(pid)
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    elif how == "sigkill":
        proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"llama.cpp server {pid} outlived its parent ({how})"


SECRET = "sk-tunefold-test-9f8e7d6c5b4a"


def test_api_key_is_sent_but_never_written(tmp_path: Path) -> None:
    script = """
import json, logging, sys
from tunefold.config import EndpointConfig, LLMConfig
from tunefold.io import write_json
from tunefold.llm import ChatRequest, Gateway
logging.basicConfig(level=logging.DEBUG)
ep = EndpointConfig(base_url=sys.argv[1], model="fault-model", api_key_env="TUNEFOLD_TEST_KEY")
with Gateway(LLMConfig(judge=ep), stage="secrets", cache_dir=sys.argv[2] + "/cache") as gw:
    results = gw.batch("judge", [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)])
    write_json(sys.argv[2] + "/metrics.json", {"llm": gw.metrics(), "prov": [r.provenance for r in results]})
"""
    with FaultServer(["500"]) as srv:
        env = {**os.environ, "TUNEFOLD_TEST_KEY": SECRET}
        out = subprocess.run(
            [sys.executable, "-c", script, srv.base_url, str(tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert srv.requests and all(r["auth"] == f"Bearer {SECRET}" for r in srv.requests)
    (tmp_path / "run.log").write_text(out.stdout + out.stderr)
    assert "HTTP Request: POST" in (tmp_path / "run.log").read_text()  # the debug log did capture the traffic
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_api_key_in_params_is_refused_without_echoing_it(tmp_path: Path) -> None:
    from tunefold.config import load_params
    from tunefold.errors import ParamsError

    path = tmp_path / "params.yaml"
    path.write_text(f"ingest:\n  sources: [{{path: a}}]\nllm:\n  judge:\n    api_key: {SECRET}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "never read from params.yaml" in str(err.value) and SECRET not in str(err.value)
    path.write_text(f"ingest:\n  sources: [{{path: a}}]\nllm:\n  judge:\n    api_key_env: {SECRET}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "llm.judge.api_key_env" in str(err.value) and SECRET not in str(err.value)


def test_api_key_from_prefect_secret_block(tmp_path: Path) -> None:
    script = """
import sys
from prefect.blocks.system import Secret
from tunefold.config import EndpointConfig
from tunefold.llm.secrets import resolve_api_key
Secret(value=sys.argv[1]).save("tunefold-judge-key", overwrite=True)
key = resolve_api_key(EndpointConfig(base_url="https://example.invalid/v1", model="m",
                                     api_key_secret="tunefold-judge-key"), "https://example.invalid/v1")
print("match" if key == sys.argv[1] else "mismatch")
"""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-c", script, SECRET], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "match"


def test_stage_metrics_record_llm_usage_and_stop_the_gateway(tmp_path: Path) -> None:
    """A stage that calls an LLM through its context gets cache hits, tokens and cost in its metrics JSON."""
    import yaml

    from tunefold.pipeline.stage import stage_main

    with FaultServer(default="ok:[[6]]") as srv:
        params = {
            "ingest": {"sources": [{"path": "x.jsonl"}]},
            "llm": {
                "cache_dir": str(tmp_path / "cache"),
                "judge": {"base_url": srv.base_url, "model": "fault-model", "price_input_per_1k": 1.0},
            },
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

        def run(ctx, args) -> dict:
            results = ctx.gateway.batch("judge", [ask("a"), ask("b"), ask("a")])
            return {"rated": sum(parse_rating(r.text).ok for r in results)}

        argv = ["--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "m.json")]
        for _ in range(2):
            assert stage_main("judge_demo", "demo", lambda p: None, run, argv) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["rated"] == 3
    llm = m["llm"]["judge"]
    assert (llm["requests"], llm["cache_hits"], llm["calls_sent"]) == (3, 3, 0)  # second run: all from cache
    assert len(srv.requests) == 2  # "a" twice in one batch is sent once: the repeat waits and reads the cache
