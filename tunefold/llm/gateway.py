"""The LLM gateway: every teacher and judge call in the project goes through `Gateway`.

Per role (`llm.teacher`, `llm.judge` in params.yaml) it resolves an OpenAI-compatible endpoint, or starts the
embedded batching server (shared by roles, stopped on exit). Calls go through the `openai` client with bounded
concurrency, retries with exponential backoff and jitter (429 honouring Retry-After, 5xx, timeouts, connection
errors, unreadable bodies), a circuit breaker that fails the stage when an endpoint is dead, a persistent cache
of deterministic requests, and token/cost accounting written to the stage's metrics.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from tunefold.config import EndpointConfig, LLMConfig
from tunefold.errors import TunefoldError
from tunefold.llm.cache import ResponseCache, is_deterministic, request_key
from tunefold.llm.engine import ENGINE_REVISION
from tunefold.llm.parsing import Parsed, failed, parse_model
from tunefold.llm.secrets import resolve_api_key
from tunefold.llm.server import EmbeddedServer, embedded_alias

log = logging.getLogger(__name__)
GATEWAY_VERSION = "1"
T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


class EndpointDown(TunefoldError):
    """The circuit breaker opened: the endpoint failed too many requests in a row."""


class EndpointRejected(TunefoldError):
    """Authentication or routing errors (401/403/404): every request would fail the same way."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. Unset sampling fields fall back to the role's params."""

    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    template_hash: str | None = None


@dataclass(frozen=True)
class ChatResult:
    text: str | None
    error: str | None
    cached: bool
    attempts: int
    provenance: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None  # "length": cut by max_tokens (a judge reply cut short is never parsed)

    @property
    def ok(self) -> bool:
        return self.error is None


class _Breaker:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.consecutive = 0
        self.last_error = ""
        self.lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.consecutive >= self.threshold

    def record(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.consecutive = 0
            else:
                self.consecutive += 1
                self.last_error = error


@dataclass
class _Endpoint:
    role: str
    cfg: EndpointConfig
    name: str  # what logs and errors call it: the base URL, or "embedded:<gguf>"
    base_url: str
    model: str
    fingerprint: str  # model id plus, for the embedded server, a hash of the weights
    json_mode: str
    client: Any
    concurrency: int
    slots: threading.Semaphore
    breaker: _Breaker


class _Stats:
    KEYS = (
        "requests",
        "calls_sent",
        "cache_hits",
        "cache_misses",
        "retries",
        "failed_requests",
        "truncated_replies",
        "parse_retries",
        "prompt_tokens",
        "completion_tokens",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_role: dict[str, Counter[str]] = {}
        self.errors: dict[str, Counter[str]] = {}
        self.parse_failures: dict[str, Counter[str]] = {}
        self.cost: Counter[str] = Counter()

    def add(self, role: str, **counts: float) -> None:
        with self.lock:
            c = self.by_role.setdefault(role, Counter())
            for k, v in counts.items():
                c[k] += v

    def error(self, role: str, kind: str) -> None:
        with self.lock:
            self.errors.setdefault(role, Counter())[kind] += 1

    def parse_failure(self, role: str, parser: str) -> None:
        with self.lock:
            self.parse_failures.setdefault(role, Counter())[parser] += 1


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class Gateway:
    """Use as a context manager: `with Gateway(params.llm, stage="annotate") as gw: gw.batch("teacher", reqs)`."""

    def __init__(self, cfg: LLMConfig, stage: str, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.stage = stage
        self.cache = ResponseCache(cache_dir or cfg.cache_dir)
        self.stats = _Stats()
        self._server: EmbeddedServer | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[threading.Lock, int]] = {}
        self._extra: dict[str, EndpointConfig] = {}

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.cache.close()

    # --- endpoints ------------------------------------------------------------------------------------------

    def endpoint(self, role: str) -> _Endpoint:
        """Resolve a role's endpoint (starting the embedded server if it needs one). Call from the main thread."""
        with self._lock:
            if role not in self._endpoints:
                self._endpoints[role] = self._connect(role)
            return self._endpoints[role]

    def add_role(self, role: str, cfg: EndpointConfig) -> None:
        """Another endpoint beside teacher and judge, e.g. a candidate model served by vLLM for answer generation."""
        with self._lock:
            self._extra[role] = cfg
            self._endpoints.pop(role, None)

    def _role_cfg(self, role: str) -> EndpointConfig:
        cfg: EndpointConfig | None = self._extra.get(role) or getattr(self.cfg, role, None)
        if not isinstance(cfg, EndpointConfig):
            raise TunefoldError(f"unknown LLM role {role!r}; params.yaml llm has teacher, judge and student")
        if cfg.base_url and not cfg.model:
            raise TunefoldError(f"llm.{role}.model must be set when llm.{role}.base_url is")
        return cfg

    def model_name(self, role: str) -> str:
        """The model id a role's calls name, without connecting (no embedded server is started just for this)."""
        cfg = self._role_cfg(role)
        if cfg.base_url and cfg.model:
            return cfg.model
        return self._server.alias if self._server else embedded_alias(self.cfg.embedded)

    def _connect(self, role: str) -> _Endpoint:
        from openai import OpenAI

        cfg = self._role_cfg(role)
        if cfg.base_url:
            base_url, model = cfg.base_url.rstrip("/"), cfg.model
            api_key = resolve_api_key(cfg, base_url)
            name, fingerprint = base_url, model
            json_mode = "json_object" if cfg.json_mode == "auto" else cfg.json_mode
            concurrency = cfg.concurrency
        else:
            if self._server is None:
                self._server = EmbeddedServer(self.cfg.embedded).start()
            server = self._server
            base_url, model, api_key = server.base_url, server.alias, "embedded-no-key"
            name = f"embedded:{server.source.name}" + (f" in {server.dtype}" if server.dtype else "")
            fingerprint = f"{server.alias}@{server.fingerprint}+{ENGINE_REVISION}"  # its numbers, its replies
            json_mode = "json_object_schema" if cfg.json_mode == "auto" else cfg.json_mode
            concurrency = self.cfg.embedded.slots  # all of them: it decodes them together
        client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=cfg.timeout)
        log.info("llm.%s -> %s (model %s, concurrency %d)", role, name, model, concurrency)
        return _Endpoint(
            role=role,
            cfg=cfg,
            name=name,
            base_url=base_url,
            model=model,
            fingerprint=fingerprint,
            json_mode=json_mode,
            client=client,
            concurrency=concurrency,
            slots=threading.Semaphore(concurrency),
            breaker=_Breaker(self.cfg.breaker_failures),
        )

    # --- one call ---------------------------------------------------------------------------------------------

    def _body(self, ep: _Endpoint, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": req.messages,
            "temperature": ep.cfg.temperature if req.temperature is None else req.temperature,
            "max_tokens": req.max_tokens or ep.cfg.max_tokens,
        }
        seed = req.seed if req.seed is not None else ep.cfg.seed
        if seed is not None:
            body["seed"] = seed
        if req.response_format is not None:
            body["response_format"] = req.response_format
        return body

    @staticmethod
    def _provenance(ep: _Endpoint, req: ChatRequest, body: dict[str, Any]) -> dict[str, Any]:
        """What a stored result records so judgments from different judges, prompts or settings never mix."""
        return {
            "endpoint": ep.name,
            "model": ep.model,
            "model_fingerprint": ep.fingerprint,
            "template_hash": req.template_hash,
            "sampling": {k: body[k] for k in ("temperature", "max_tokens", "seed") if k in body},
            "response_format": (req.response_format or {}).get("type"),
            "gateway_version": GATEWAY_VERSION,
        }

    def chat(self, role: str, req: ChatRequest) -> ChatResult:
        """One request: from the cache if it is there, else sent with retries. Never raises for one bad reply."""
        ep = self.endpoint(role)
        body = self._body(ep, req)
        prov = self._provenance(ep, req, body)
        key = request_key(ep.fingerprint, body)
        cacheable = is_deterministic(body)
        self.stats.add(role, requests=1)
        if not cacheable:
            return self._fresh(ep, body, prov, role, key=None)
        with self._key_lock(key):  # identical requests in flight wait for the first one, then read the cache
            hit = self.cache.get(key)
            if hit is not None and "finish_reason" in hit:  # older entries lack it: they could hide a cut reply
                self.stats.add(role, cache_hits=1)
                return self._counted(
                    role, ChatResult(hit["text"], None, True, 0, prov, hit["usage"], hit["finish_reason"])
                )
            return self._fresh(ep, body, prov, role, key)

    def answer(self, role: str, messages: list[dict[str, str]]) -> str | None:
        """A plain reply's text with the role's sampling; None when the call failed or the reply is empty."""
        result = self.chat(role, ChatRequest(messages=messages))
        text = (result.text or "").strip() if result.ok else ""
        return text or None

    def _fresh(
        self, ep: _Endpoint, body: dict[str, Any], prov: dict[str, Any], role: str, key: str | None
    ) -> ChatResult:
        self.stats.add(role, cache_misses=1)
        text, usage, finish, error, attempts = self._send(ep, body)
        if error is not None:
            self.stats.add(role, failed_requests=1)
            return ChatResult(None, error, False, attempts, prov)
        if key is not None:
            self.cache.put(key, ep.fingerprint, {"text": text, "usage": usage, "finish_reason": finish})
        return self._counted(role, ChatResult(text, None, False, attempts, prov, usage, finish))

    def _counted(self, role: str, result: ChatResult) -> ChatResult:
        if result.finish_reason == "length":
            self.stats.add(role, truncated_replies=1)
        return result

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._inflight.get(key, (threading.Lock(), 0))
            self._inflight[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._inflight[key]
                if users == 1:
                    del self._inflight[key]
                else:
                    self._inflight[key] = (lock, users - 1)

    def _send(
        self, ep: _Endpoint, body: dict[str, Any]
    ) -> tuple[str | None, dict[str, int], str | None, str | None, int]:
        import openai

        error = ""
        for attempt in range(1, ep.cfg.max_retries + 2):
            if ep.breaker.open:
                raise EndpointDown(
                    f"llm.{ep.role} endpoint {ep.name} (model {ep.model}) failed {ep.breaker.consecutive} requests "
                    f"in a row; last error: {ep.breaker.last_error}. Check that it is up and reachable."
                )
            retry_after = None
            try:
                with ep.slots:
                    self.stats.add(ep.role, calls_sent=1)
                    resp = ep.client.chat.completions.create(model=ep.model, **body)
                text = resp.choices[0].message.content if resp.choices else None
                if not isinstance(text, str):
                    raise ValueError("reply has no message content")
                finish = resp.choices[0].finish_reason
                usage = {
                    "prompt_tokens": getattr(resp.usage, "prompt_tokens", 0) or 0,
                    "completion_tokens": getattr(resp.usage, "completion_tokens", 0) or 0,
                }
                self._account(ep, usage)
                ep.breaker.record(None)
                return text, usage, finish, None, attempt
            except openai.RateLimitError as e:
                kind, error, retry_after = "http_429", f"HTTP 429 rate limited: {_short(e)}", _retry_after(e)
            except openai.APIStatusError as e:
                if e.status_code in (401, 403, 404):
                    raise EndpointRejected(
                        f"llm.{ep.role} endpoint {ep.name} answered HTTP {e.status_code} for model {ep.model}: "
                        f"{_short(e)}. Check the model id and the API key (env {ep.cfg.api_key_env})."
                    ) from None
                if e.status_code < 500:
                    self.stats.error(ep.role, f"http_{e.status_code}")
                    return None, {}, None, f"HTTP {e.status_code}: {_short(e)}", attempt
                kind, error = f"http_{e.status_code}", f"HTTP {e.status_code}: {_short(e)}"
                retry_after = _retry_after(e)
            except openai.APITimeoutError:
                kind, error = "timeout", f"no reply within {ep.cfg.timeout:g}s"
            except openai.APIConnectionError as e:
                kind, error = "connection", f"connection error: {_short(e.__cause__ or e)}"
            except (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError) as e:
                kind, error = "bad_response", f"unreadable reply: {_short(e)}"
            self.stats.error(ep.role, kind)
            if kind != "http_429":  # a rate-limited endpoint is alive; do not count it towards the breaker
                ep.breaker.record(error)
            if attempt > ep.cfg.max_retries:
                break
            self.stats.add(ep.role, retries=1)
            delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = min(self.cfg.backoff_max, max(delay, retry_after))
            log.debug("llm.%s %s; retry %d in %.2fs", ep.role, error, attempt, delay)
            time.sleep(delay)
        return None, {}, None, error, ep.cfg.max_retries + 1

    def _account(self, ep: _Endpoint, usage: dict[str, int]) -> None:
        self.stats.add(ep.role, **usage)
        cost = (
            usage["prompt_tokens"] * ep.cfg.price_input_per_1k + usage["completion_tokens"] * ep.cfg.price_output_per_1k
        ) / 1000
        with self.stats.lock:
            self.stats.cost[ep.role] += cost

    # --- structured output --------------------------------------------------------------------------------------

    def json_request(self, role: str, req: ChatRequest, schema: type[BaseModel]) -> ChatRequest:
        """The request with JSON asked for the way this endpoint supports it."""
        mode = self.endpoint(role).json_mode
        if mode == "json_object_schema":
            return replace(req, response_format={"type": "json_object", "schema": schema.model_json_schema()})
        if mode == "json_object":
            return replace(req, response_format={"type": "json_object"})
        return req

    def chat_json(
        self, role: str, req: ChatRequest, schema: type[T], attempts: int = 3
    ) -> tuple[Parsed[T], ChatResult]:
        """Ask for JSON and validate it into `schema`; up to `attempts` tries, then a typed failure.

        Re-asks sample (temperature 0.7) with seed = attempt number: a greedy re-ask would repeat the same reply,
        and the seed keeps each deterministic and cacheable. They are counted (`parse_retries`, `Parsed.retries`),
        so a caller that grades can keep a re-asked value apart from a first-try one.
        """
        base = self.json_request(role, req, schema)
        parsed: Parsed[T] = failed("call_failed", "not attempted")
        result = None
        for k in range(attempts):
            if k:
                self.stats.add(role, parse_retries=1)
            attempt_req = base if k == 0 else replace(base, temperature=max(0.7, base.temperature or 0), seed=k)
            result = self.chat(role, attempt_req)
            parsed = replace(read_reply(result, lambda text: parse_model(text, schema)), retries=k)
            if parsed.ok or parsed.kind == "call_failed":
                break
        assert result is not None
        if not parsed.ok:
            self.stats.parse_failure(role, schema.__name__)
        return parsed, result

    def chat_parsed(
        self, role: str, req: ChatRequest, parser: Callable[[str | None], Parsed[Any]], name: str
    ) -> tuple[Parsed[Any], ChatResult]:
        """A call whose reply is read by a regex parser (e.g. `parse_rating`); failures are counted under `name`."""
        result = self.chat(role, req)
        parsed = read_reply(result, parser)
        if not parsed.ok:
            self.stats.parse_failure(role, name)
        return parsed, result

    # --- batches ------------------------------------------------------------------------------------------------

    def map(self, role: str, fn: Callable[[R], Any], items: Sequence[R], desc: str) -> list[Any]:
        """Apply `fn` (which makes gateway calls for `role`) to every item concurrently, in order, with a progress bar.

        A dead endpoint (circuit breaker) or a rejected one stops the batch and fails the stage; other failures
        come back as typed results in their slot.
        """
        from tqdm.auto import tqdm

        ep = self.endpoint(role)  # start servers in this thread, not a worker
        results: list[Any] = [None] * len(items)
        with (
            ThreadPoolExecutor(max_workers=ep.concurrency) as pool,
            tqdm(total=len(items), desc=f"{self.stage}: {desc}", unit="req", disable=None) as bar,
        ):
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise fut.exception()  # type: ignore[misc]
                    results[futures[fut]] = fut.result()
                    bar.update(1)
        log.info("%s: %s: %d requests done (%s)", self.stage, desc, len(items), self._brief(role))
        return results

    def batch(self, role: str, requests: Sequence[ChatRequest], desc: str = "chat") -> list[ChatResult]:
        return self.map(role, lambda r: self.chat(role, r), requests, desc)

    def batch_json(
        self, role: str, requests: Sequence[ChatRequest], schema: type[T], desc: str = "json", attempts: int = 3
    ) -> list[tuple[Parsed[T], ChatResult]]:
        return self.map(role, lambda r: self.chat_json(role, r, schema, attempts), requests, desc)

    # --- accounting -------------------------------------------------------------------------------------------

    def _brief(self, role: str) -> str:
        c = self.stats.by_role.get(role, Counter())
        return f"{c['cache_hits']} cached, {c['calls_sent']} sent, {c['failed_requests']} failed"

    def metrics(self) -> dict[str, Any]:
        """Per role: requests, cache hits/misses, calls sent, retries, failures by kind, tokens, cost."""
        out: dict[str, Any] = {}
        with self.stats.lock:
            for role, c in self.stats.by_role.items():
                ep = self._endpoints.get(role)
                out[role] = {k: int(c[k]) for k in _Stats.KEYS} | {
                    "cost_usd": round(self.stats.cost[role], 6),
                    "errors": dict(self.stats.errors.get(role, {})),
                    "parse_failures": dict(self.stats.parse_failures.get(role, {})),
                    "endpoint": ep.name if ep else None,
                    "model": ep.model if ep else None,
                }
        return out


def read_reply(result: ChatResult, parser: Callable[[str | None], Parsed[Any]]) -> Parsed[Any]:
    """Parse a reply unless the call failed or max_tokens cut it: a cut reply can still match a pattern (a
    half-written JSON object, an early `[[5]]` in a draft), so it is a failure of its own kind, never a value."""
    if not result.ok:
        return failed("call_failed", f"call failed: {result.error}")
    if result.finish_reason == "length":
        cap = result.provenance.get("sampling", {}).get("max_tokens")
        return failed("truncated", f"reply cut at max_tokens={cap} before it ended", result.text)
    return parser(result.text)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
