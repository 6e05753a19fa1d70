"""The embedded OpenAI-compatible server: chat completions of one GGUF, decoded in batches by `Engine`.

llama-cpp-python's own server answers one request at a time; the judge and teacher stages send many at once, so
this one decodes up to `--slots` of them together. It speaks the part of the API the gateway uses: `GET /v1/models`
and non-streaming `POST /v1/chat/completions` with temperature, max_tokens, seed, top_p, the penalties and JSON mode
(`response_format` json_object, with or without a schema, or json_schema). Prompt and sampling are llama-cpp-python's
server's: the GGUF's own chat template, its defaults (top_k 40, min_p 0.05, repeat_penalty 1.1 over the last 64
tokens), so greedy replies are the same text as from its server (a test).

Run: python -m tunefold.llm.batch_server --model FILE.gguf --alias NAME --port N [--slots 8] [--n-ctx 4096]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tunefold.llm.engine import Engine, Sampling

log = logging.getLogger("tunefold.llm.batch_server")


class BadRequest(ValueError):
    """A request this server cannot answer as asked: HTTP 400 with the reason."""


class ChatModel:
    """The engine plus what turns an OpenAI chat request into its tokens and sampling."""

    def __init__(self, engine: Engine, alias: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.engine = engine
        self.alias = alias
        template = engine.metadata("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF has no tokenizer.chat_template to format chat messages with")
        eos, bos = engine.special_tokens()
        self.format = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)

    def sampling(self, body: dict[str, Any], prompt_tokens: int) -> Sampling:
        if body.get("stream"):
            raise BadRequest("streaming is not supported by the embedded server; send stream=false")
        if body.get("n", 1) != 1:
            raise BadRequest("n must be 1")
        room = self.engine.n_ctx - prompt_tokens
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or room
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be a positive integer, not {max_tokens!r}")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest(f"seed must be an integer, not {seed!r}")
        return Sampling(
            max_tokens=max_tokens,
            temperature=number(body, "temperature", 1.0),
            seed=seed,
            top_k=int(number(body, "top_k", 40)),
            top_p=number(body, "top_p", 0.95),
            min_p=number(body, "min_p", 0.05),
            repeat_penalty=number(body, "repeat_penalty", 1.1),
            frequency_penalty=number(body, "frequency_penalty", 0.0),
            presence_penalty=number(body, "presence_penalty", 0.0),
            grammar=grammar_for(body.get("response_format")),
        )

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        try:
            prompt = self.engine.tokenize(self.format(messages=messages).prompt)
        except Exception as exc:  # the template raises on role orders it does not accept
            raise BadRequest(f"messages cannot be formatted with the model's chat template: {exc}") from None
        try:
            done = self.engine.complete(prompt, self.sampling(body, len(prompt)))
        except ValueError as exc:  # PromptTooLong, or a grammar llama.cpp rejects
            raise BadRequest(str(exc)) from None
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.alias,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text},
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
            },
        }


def number(body: dict[str, Any], key: str, default: float) -> float:
    """A sampling setting: absent or null means the default (as in OpenAI's API); anything but a number is the
    client's error (400), not the server's."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be a number, not {value!r}")
    return float(value)


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """GBNF for JSON mode, built by llama-cpp-python's converter (as its server does)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    else:
        raise BadRequest(f"response_format type {kind!r} is not supported (json_object, json_schema, text)")
    if not schema:
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise BadRequest(f"response_format schema cannot be turned into a grammar: {exc}") from None


def handler_for(model: ChatModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(HTTPStatus.OK, {"object": "list", "data": [{"id": model.alias, "object": "model"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "slots": model.engine.slots})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                self._send(HTTPStatus.OK, model.chat(body))
            except (BadRequest, json.JSONDecodeError) as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except Exception as exc:  # the engine failed: a server error the client may retry
                log.exception("chat completion failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the GGUF file")
    ap.add_argument("--alias", help="the model id clients name (default: the file's stem)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slots", type=int, default=8, help="requests decoded together")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context tokens of each slot (prompt + reply)")
    ap.add_argument("--threads", type=int, default=None, help="decode threads (default: every usable core)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(args.model, slots=args.slots, n_ctx=args.n_ctx, n_threads=args.threads)
    model = ChatModel(engine, args.alias or args.model.stem.lower())
    server = ThreadingHTTPServer((args.host, args.port), handler_for(model))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("serving %s as %r on http://%s:%d/v1", args.model.name, model.alias, args.host, args.port)
    log.info("%d requests decoded together, %d context tokens each", engine.slots, engine.n_ctx)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
