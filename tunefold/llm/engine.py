"""Continuous batching on llama.cpp: several chat requests decoded together in one context.

Each sequence has its own KV cells, sampler chain (grammar, seed) and token budget; requests join and leave the
batch between steps. Prompts are decoded alone, in fixed chunks that a later prompt starting the same way reuses;
generated tokens of all sequences are decoded together. A step runs on every core that other processes leave free
(`CoreLoad`), on one thread when they are busy: the server's threads spin briefly between kernels (tunefold.cores),
which pays alone and costs several times over beside another busy process. Under a sleeping policy
(OMP_WAIT_POLICY=PASSIVE) a step of few tokens runs on one thread, since a second that sleeps between the many
small kernels of a step costs more than it gives (bench/RESULTS.md). A reply is the same batched or alone, on any
number of threads, and whatever ran before it (tests): a model whose kernels sum a row differently with the rows
beside it (16-bit, K-quants) decodes every step one row per slot, free slots with a throwaway token.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefold.cores import WAIT_POLICY, CoreLoad, usable_cores

log = logging.getLogger(__name__)
# Under sleeping OpenMP threads a decode step of fewer tokens runs on one thread: waking a second costs more than
# it gives (bench/RESULTS.md)
SHARED_STEP_TOKENS = 4
# In the gateway's cache key of embedded replies: chunked prompts decode with other numbers than llama-cpp-python's
# server (one batch of up to 512 tokens), so a long prompt's reply may differ from the one that server cached
ENGINE_REVISION = "chunk64"
PROMPT_CHUNK = 64  # prompt tokens per decode step, at fixed positions; the unit a later prompt can reuse
# llama_ftype values (Q4_0, Q4_1, Q8_0) whose matrix kernels sum every row of a decode step alike however many rows
# it holds; for the others (16/32-bit, K-quants) a row's sums change with the rows beside it (bench/RESULTS.md)
ROW_INDEPENDENT = {2, 3, 7}
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # llama_token_data, as a numpy record


@dataclass(frozen=True)
class Sampling:
    """How one request samples. temperature <= 0 is greedy; a seed makes a sampled reply reproducible."""

    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1  # over the last `penalty_last_n` reply tokens; 1.1 and 64: llama-cpp-python's server's
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    grammar: str | None = None  # GBNF the reply must follow (JSON mode)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop": the model ended it; "length": max_tokens or the slot's context cut it
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens not decoded again: an earlier prompt left them in the slot


def rows_independent(file_type: int | str | None) -> bool:
    """Whether a reply of a model of this `general.file_type` is the same whatever is decoded beside it; the engine
    decodes the others' steps one row per slot, so their replies depend on the number of slots instead."""
    return file_type is not None and int(file_type) in ROW_INDEPENDENT


class PromptTooLong(ValueError):
    """The prompt leaves no room to answer in one slot's context."""


@dataclass
class _Slot:
    seq: int
    prompt: list[int]
    sampling: Sampling
    future: Future[Completion]
    sampler: Any  # the chain without the grammar
    grammar: Any  # None, or the grammar sampler, checked against the chain's pick first
    cached: int = 0  # prompt tokens whose KV cells an earlier request left
    fed: int = 0  # prompt tokens already in the KV cache
    pos: int = 0
    out: list[int] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    logits_at: int = -1  # this step's batch index of the slot's logits (-1: none this step)


class Engine:
    """A GGUF model with `slots` sequences decoded together by one worker thread; `complete` is thread-safe."""

    def __init__(
        self, gguf: Path, slots: int = 8, n_ctx: int = 4096, n_threads: int | None = None, chunk: int = PROMPT_CHUNK
    ) -> None:
        import llama_cpp as L
        import numpy as np

        self._L = L
        quiet_llama_logs(L)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
        if not self.model:
            raise ValueError(f"llama.cpp could not load {gguf}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self._ids = np.arange(L.llama_vocab_n_tokens(self.vocab), dtype=np.int32)  # every token, for each sampling
        params = L.llama_context_default_params()
        params.n_seq_max = slots
        params.n_ctx = n_ctx * slots  # each sequence gets n_ctx cells of its own
        params.n_batch = params.n_ubatch = 512
        params.kv_unified = False
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's server: the same replies
        self.n_threads = n_threads or usable_cores()
        params.n_threads = params.n_threads_batch = self._threads_now = self.n_threads
        self._load = CoreLoad()
        self._sleeping = os.environ.get(WAIT_POLICY, "").upper() == "PASSIVE"
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} x {slots} tokens for {gguf}")
        self.slots = slots
        self.n_ctx = L.llama_n_ctx_seq(self.ctx)
        self.n_batch = params.n_batch
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.chunk = chunk
        self._held: dict[int, list[int]] = {}  # free sequence -> the prompt tokens its KV cells still hold
        self.fixed_steps = not rows_independent(self.metadata("general.file_type"))
        self._queue: queue.Queue[tuple[list[int], Sampling, Future[Completion]] | None] = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._worker.start()

    def _threads_for(self, n_tokens: int) -> int:
        """Threads for a step of `n_tokens`: the cores other processes leave free, up to `n_threads`."""
        if self._sleeping and n_tokens < SHARED_STEP_TOKENS:
            return 1
        return max(1, min(self.n_threads, int(self._load.free_cores() + 0.5)))

    # --- public -----------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        raw = text.encode()
        cap = len(raw) + 16
        buf = (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_bos, True)
        if n < 0:  # cannot happen with a byte-level vocabulary, but the API says so
            raise ValueError("prompt could not be tokenized")
        return list(buf[:n])

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def special_tokens(self) -> tuple[str, str]:
        """The end- and begin-of-sequence tokens' text, which chat templates name."""
        L = self._L
        eos, bos = L.llama_vocab_eos(self.vocab), L.llama_vocab_bos(self.vocab)
        return tuple(self._piece(t, special=True).decode(errors="replace") for t in (eos, bos))  # type: ignore[return-value]

    def submit(self, prompt: list[int], sampling: Sampling) -> Future[Completion]:
        """Queue a request; the future fails with PromptTooLong when it cannot fit a slot."""
        future: Future[Completion] = Future()
        if not prompt or len(prompt) >= self.n_ctx:
            future.set_exception(PromptTooLong(f"prompt of {len(prompt)} tokens; a slot holds {self.n_ctx}"))
        elif self._closed.is_set():
            future.set_exception(RuntimeError("engine is closed"))
        else:
            self._queue.put((prompt, sampling, future))
        return future

    def complete(self, prompt: list[int], sampling: Sampling) -> Completion:
        return self.submit(prompt, sampling).result()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._worker.join()
        L = self._L
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    # --- the worker -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        active: dict[int, _Slot] = {}
        try:
            while True:
                if not self._admit(active):
                    break
                if active:
                    self._step(active)
        except Exception as exc:  # a failed decode must not leave callers waiting forever
            log.exception("llama.cpp batch worker failed")
            self._closed.set()
            for slot in active.values():
                slot.future.set_exception(exc)
            self._fail_queued(exc)
        finally:
            for slot in active.values():
                self._free(slot)

    def _admit(self, active: dict[int, _Slot]) -> bool:
        """Move queued requests into free sequence ids (waiting for one when none is active); False when the
        engine is closing."""
        while len(active) < self.slots:
            try:
                item = self._queue.get(block=not active)
            except queue.Empty:
                return True
            if item is None:
                self._fail_queued(RuntimeError("engine is closed"))
                for slot in active.values():
                    slot.future.set_exception(RuntimeError("engine is closed"))
                return False
            prompt, sampling, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                chain, grammar = self._samplers(sampling)
            except ValueError as exc:
                future.set_exception(exc)
                continue
            seq, kept = self._reuse(prompt, free=set(range(self.slots)) - set(active))
            active[seq] = _Slot(seq, prompt, sampling, future, chain, grammar, cached=kept, fed=kept, pos=kept)
        return True

    def _reuse(self, prompt: list[int], free: set[int]) -> tuple[int, int]:
        """The free sequence whose KV cells hold the longest start of `prompt`, and how many of them to keep.

        Judge and teacher prompts of a stage share their instructions, so most of a prompt is often in some slot
        already. Only whole prompt chunks are kept: a chunk's numbers depend on the chunks before it and on its own
        shape, both the same whether it is decoded again or kept, so a reply never depends on which requests came
        before (a test). Generated tokens were decoded in other batch shapes and are never kept.
        """
        mem = self._L.llama_get_memory(self.ctx)
        best, shared = min(free), 0
        for seq in sorted(free):
            held = self._held.get(seq, [])
            n = next(
                (i for i, (a, b) in enumerate(zip(held, prompt, strict=False)) if a != b), min(len(held), len(prompt))
            )
            n = min(n, len(prompt) - 1) // self.chunk * self.chunk  # whole chunks, and the last token decoded again
            if n > shared:
                best, shared = seq, n
        self._held.pop(best, None)
        if shared == 0 or not self._L.llama_memory_seq_rm(mem, best, shared, -1):
            self._L.llama_memory_seq_rm(mem, best, -1, -1)
            shared = 0
        return best, shared

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[2].set_running_or_notify_cancel():
                item[2].set_exception(exc)

    def _step(self, active: dict[int, _Slot]) -> None:
        """One llama_decode: the next chunk of one sequence's prompt, else every sequence's last token.

        A prompt is decoded in chunks of `chunk` tokens at fixed positions, never beside other sequences' tokens:
        the same batch shapes as decoding it alone, hence the same numbers and the same greedy reply whatever else
        is running, and the chunks another request can reuse (a test)."""
        L, batch = self._L, self._batch
        batch.n_tokens = 0

        def add(slot: _Slot, token: int, logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, slot.pos, 1
            batch.seq_id[i][0], batch.logits[i] = slot.seq, logits
            slot.pos += 1
            batch.n_tokens += 1
            if logits:
                slot.logits_at = i

        for slot in active.values():
            slot.logits_at = -1
        padding: list[tuple[int, int]] = []
        filling = next((slot for slot in active.values() if slot.fed < len(slot.prompt)), None)
        if filling is not None:
            while filling.fed < len(filling.prompt) and (batch.n_tokens == 0 or filling.fed % self.chunk):
                filling.fed += 1
                add(filling, filling.prompt[filling.fed - 1], filling.fed == len(filling.prompt))
        elif not self.fixed_steps:
            for slot in active.values():
                add(slot, slot.out[-1], True)
        else:
            for seq in range(self.slots):
                if seq in active:
                    add(active[seq], active[seq].out[-1], True)
                else:  # a throwaway token after the cells the free sequence keeps, removed after the step
                    i, pos = batch.n_tokens, len(self._held.get(seq, ()))
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = 0, pos, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, True
                    batch.n_tokens += 1
                    padding.append((seq, pos))
        threads = self._threads_for(batch.n_tokens)
        if threads != self._threads_now:
            L.llama_set_n_threads(self.ctx, threads, threads)
            self._threads_now = threads
        rc = L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        mem = L.llama_get_memory(self.ctx) if padding else None
        for seq, pos in padding:
            L.llama_memory_seq_rm(mem, seq, pos, -1)
        for seq, slot in list(active.items()):
            if slot.logits_at < 0:
                continue
            token = self._sample(slot)
            if L.llama_vocab_is_eog(self.vocab, token):
                self._finish(active, seq, "stop")
                continue
            slot.out.append(token)
            slot.pieces.append(self._piece(token, special=False))
            if len(slot.out) >= slot.sampling.max_tokens or slot.pos >= self.n_ctx:
                self._finish(active, seq, "length")

    def _finish(self, active: dict[int, _Slot], seq: int, reason: str) -> None:
        slot = active.pop(seq)
        self._free(slot)
        keep = len(slot.prompt) // self.chunk * self.chunk  # whole prompt chunks: what a later prompt may reuse
        self._L.llama_memory_seq_rm(self._L.llama_get_memory(self.ctx), seq, keep, -1)
        self._held[seq] = slot.prompt[:keep]
        text = b"".join(slot.pieces).decode(errors="ignore")
        slot.future.set_result(Completion(text, reason, len(slot.prompt), len(slot.out), slot.cached))

    def _samplers(self, s: Sampling) -> tuple[Any, Any]:
        """The chain llama-cpp-python's server builds (penalties, then greedy or top-k/top-p/min-p/temperature/
        seeded draw) and, apart from it, the grammar."""
        L = self._L
        grammar = None
        if s.grammar is not None:
            grammar = L.llama_sampler_init_grammar(self.vocab, s.grammar.encode(), b"root")
            if not grammar:
                raise ValueError("the grammar does not parse")
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        penalties = (n_vocab, s.penalty_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty)
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(*penalties))
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain, grammar
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else L.LLAMA_DEFAULT_SEED
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
        return chain, grammar

    def _free(self, slot: _Slot) -> None:
        self._L.llama_sampler_free(slot.sampler)
        if slot.grammar is not None:
            self._L.llama_sampler_free(slot.grammar)

    def _sample(self, slot: _Slot) -> int:
        """The chain's pick, as llama-cpp-python's server makes it (the same token: tests/test_batch_server.py).

        Greedy under a grammar, the pick is checked against the grammar before the whole vocabulary is masked:
        the best token, when allowed, is the best allowed one (penalties and the grammar each change one token's
        logit alone, so their order does not matter), and JSON mode then costs little more than free text.
        A sampled reply under a grammar masks first, so its seeded draw is the one the old server made.
        """
        L = self._L
        greedy_first = slot.grammar is None or slot.sampling.temperature <= 0
        token = -1
        if greedy_first:
            cells, arr = self._candidates(slot)
            L.llama_sampler_apply(slot.sampler, ctypes.byref(arr))
            token = int(cells["id"][arr.selected])
        if slot.grammar is not None:
            if token < 0 or not self._grammar_allows(slot.grammar, token):
                cells, arr = self._candidates(slot)
                L.llama_sampler_apply(slot.grammar, ctypes.byref(arr))
                L.llama_sampler_apply(slot.sampler, ctypes.byref(arr))
                token = int(cells["id"][arr.selected])
            L.llama_sampler_accept(slot.grammar, token)
        L.llama_sampler_accept(slot.sampler, token)  # the penalties remember it
        return token

    def _candidates(self, slot: _Slot) -> tuple[Any, Any]:
        """Every token with its logit at the slot's position, as the array the samplers edit in place."""
        import numpy as np

        n_vocab = len(self._ids)
        logits = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self.ctx, slot.logits_at), shape=(n_vocab,))
        cells = np.empty(n_vocab, dtype=_TOKEN_DATA)
        cells["id"], cells["logit"], cells["p"] = self._ids, logits, 0.0
        return cells, self._token_array(cells)

    def _grammar_allows(self, grammar: Any, token: int) -> bool:
        import numpy as np

        cell = np.array([(token, 0.0, 0.0)], dtype=_TOKEN_DATA)
        self._L.llama_sampler_apply(grammar, ctypes.byref(self._token_array(cell)))
        return bool(np.isfinite(cell["logit"][0]))

    def _token_array(self, cells: Any) -> Any:
        L = self._L
        data = cells.ctypes.data_as(ctypes.POINTER(L.llama_token_data))
        return L.llama_token_data_array(data=data, size=len(cells), selected=-1, sorted=False)

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]


_LOG_CALLBACK: Any = None
GGML_LOG_WARN, GGML_LOG_ERROR = 3, 4  # ggml's enum ggml_log_level


def quiet_llama_logs(L: Any) -> None:
    """llama.cpp prints hundreds of load lines to stderr; keep its warnings and errors only."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:

        def keep(level: int, text: bytes, _: Any) -> None:
            if level in (GGML_LOG_WARN, GGML_LOG_ERROR) and text:
                log.warning("llama.cpp: %s", text.decode(errors="replace").rstrip())

        _LOG_CALLBACK = L.llama_log_callback(keep)
        L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())
