"""Benchmark: does a token's logit vector depend on the other rows of its decode step, per GGUF number format?

The embedded engine decodes many requests in one llama.cpp step. Whether a reply is then the same alone and in
company depends on the matrix kernels llama.cpp picks for the step's number of rows. For each format this decodes
eight sequences of different lengths (45-700 tokens, each prompt alone in 64-token chunks, as the engine does),
then 16 seeded random steps: a random subset of the sequences, under random sequence ids, in random order, on 1 or
2 threads, and compares every row's logits bit for bit with the same sequence's logits in the step that holds all
eight. Two ways to build a step:

- free: the step holds only the running sequences (the engine's way for Q4_0/Q4_1/Q8_0 files);
- fixed: one row per slot, free slots with a throwaway token, every row with logits (the engine's way otherwise).

It prints, per format and way, how many of the 16 steps changed some row, and the mean time of a step. The formats
are the embedded SmolLM2 (Q4_1) and copies llama.cpp makes of it (bf16, f16, Q8_0, Q4_K_M, Q6_K) in a scratch
directory.

Run: .venv/bin/python bench/row_independence.py [--formats Q4_1,BF16,F16,Q8_0,Q4_K_M,Q6_K] [--steps 16]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SLOTS = 8
LENGTHS = [70, 300, 96, 520, 161, 45, 700, 250]


def copy_as(source: Path, kind: str, out: Path) -> Path:
    """`source` re-encoded by llama.cpp as `kind` (a LLAMA_FTYPE_MOSTLY_* name)."""
    import llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    if L.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not write {kind}")
    return out


class Steps:
    """One llama.cpp context of SLOTS sequences with their own KV cells, as the engine makes it."""

    def __init__(self, gguf: Path) -> None:
        import llama_cpp as L
        import numpy as np

        from tunefold.llm.engine import quiet_llama_logs

        quiet_llama_logs(L)
        L.llama_backend_init()
        self.L, self.np = L, np
        self.model = L.llama_model_load_from_file(str(gguf).encode(), L.llama_model_default_params())
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        p = L.llama_context_default_params()
        p.n_seq_max, p.n_ctx, p.n_batch, p.n_ubatch, p.kv_unified = SLOTS, 1024 * SLOTS, 512, 512, False
        p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(self.model, p)
        self.batch = L.llama_batch_init(512, 0, 1)
        self.mem = L.llama_get_memory(self.ctx)
        rng = np.random.default_rng(0)
        self.prompts = [[int(t) for t in rng.integers(100, 20000, size=n)] for n in LENGTHS]
        self.seconds = 0.0
        self.steps = 0

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> float:
        b = self.batch
        b.n_tokens = len(rows)
        for i, (seq, pos, token, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        start = time.perf_counter()
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - start

    def run(self, prompts: list[int], seqs: list[int], threads: int, fixed: bool) -> dict[int, object]:
        """Logits of each of `prompts` (indices) over three steps, decoded in sequences `seqs`."""
        L, np = self.L, self.np
        L.llama_set_n_threads(self.ctx, threads, threads)
        L.llama_memory_clear(self.mem, True)
        for p, seq in zip(prompts, seqs, strict=True):
            tokens = self.prompts[p]
            for c in range(0, len(tokens), 64):
                self.decode([(seq, c + j, tokens[c + j], False) for j in range(min(64, len(tokens) - c))])
        out: dict[int, list[object]] = {}
        for step in range(3):
            rows = [(seq, len(self.prompts[p]) + step, 1000 + step, True) for p, seq in zip(prompts, seqs, strict=True)]
            if fixed:
                rows += [(seq, 0, 1000, True) for seq in range(SLOTS) if seq not in seqs]
                rows.sort(key=lambda r: r[0])
            self.seconds += self.decode(rows)
            self.steps += 1
            for i, row in enumerate(rows):
                if row[0] in seqs:
                    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                    out.setdefault(prompts[seqs.index(row[0])], []).append(logits.copy())
            if fixed:
                for seq in range(SLOTS):
                    if seq not in seqs:
                        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        return {p: np.stack(v) for p, v in out.items()}

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def measure(gguf: Path, fixed: bool, n_steps: int) -> tuple[int, float]:
    """(random steps that changed some row, mean ms per step)."""
    import numpy as np

    steps = Steps(gguf)
    try:
        everything = steps.run(list(range(SLOTS)), list(range(SLOTS)), 2, fixed)
        rng = np.random.default_rng(1)
        changed = 0
        for _ in range(n_steps):
            k = int(rng.integers(1, SLOTS + 1))
            prompts = [int(x) for x in rng.permutation(SLOTS)[:k]]
            seqs = [int(x) for x in rng.permutation(SLOTS)[:k]]
            got = steps.run(prompts, seqs, int(rng.integers(1, 3)), fixed)
            changed += any(not np.array_equal(got[p], everything[p]) for p in got)
        return changed, 1000 * steps.seconds / steps.steps
    finally:
        steps.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="Q4_1,BF16,F16,Q8_0,Q4_K_M,Q6_K")
    ap.add_argument("--steps", type=int, default=16, help="random steps per format and way")
    args = ap.parse_args()

    import tunefold  # noqa: F401  (the pipeline's OpenMP policy)
    from tunefold.train.models import embedded_gguf

    source = embedded_gguf()
    print("| format | free steps: steps that changed a row | ms/step | fixed steps: changed | ms/step |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.formats.split(","):
            gguf = source if kind == "Q4_1" else copy_as(source, kind, Path(scratch) / f"{kind}.gguf")
            free = measure(gguf, False, args.steps)
            fixed = measure(gguf, True, args.steps)
            print(
                f"| {kind} | {free[0]} of {args.steps} | {free[1]:.1f} | {fixed[0]} of {args.steps} | {fixed[1]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
