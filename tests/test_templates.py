"""Assistant-only loss with and without {% generation %} markers, token by token, on three template styles.

The families: SmolLM2's own ChatML tokenizer, and the same tokenizer with added special tokens and templates
written here in two other styles (role headers closed by an end-of-turn token; turns with the assistant renamed
`model` and the system prompt folded into the first user turn). Each has a tiny random-init Llama model beside it,
so trl's real SFTTrainer builds the labels and, in the stage test, trains.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tunefold.config import SFTRound, TrainConfig
from tunefold.data.records import Message, make_record
from tunefold.errors import InputError
from tunefold.io import write_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunefold.train.training import Fit, TemplateChoice

Conversation = list[dict[str, str]]

pytestmark = pytest.mark.slow

# Header style: a header per message, then its content, closed by an end-of-turn token (nothing after it).
HEADERS = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
HEADERS_MARKED = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Turn style: the assistant is `model`, a system prompt goes into the next user turn, a newline after each turn.
TURNS = (
    "{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ '<start_of_turn>user\n' + ns.system + m['content'] + '<end_of_turn>\n' }}"
    "{% set ns.system = '' %}{% else %}{{ '<start_of_turn>model\n' + m['content'] + '<end_of_turn>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
TURNS_MARKED = TURNS.replace(
    "{{ '<start_of_turn>model\n' + m['content'] + '<end_of_turn>\n' }}",
    "{{ '<start_of_turn>model\n' }}{% generation %}{{ m['content'] + '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}",
)
# (tokens to add, eos, template, marked template or None for SmolLM2's own, end-of-turn text, answers trimmed)
FAMILIES = {
    "chatml": ([], None, None, None, "<|im_end|>", False),
    "headers": (
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        HEADERS,
        HEADERS_MARKED,
        "<|eot_id|>",
        True,
    ),
    "turns": (["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", TURNS, TURNS_MARKED, "<end_of_turn>", False),
}

CONVERSATIONS: list[Conversation] = [
    [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, of course."},
        {"role": "user", "content": "Spain?"},
        {"role": "assistant", "content": "Madrid. "},
    ],
]


def tiny_model(vocab: int) -> PreTrainedModel:
    """A random-init Llama of a few hundred thousand weights with the tokenizer's vocabulary: trl's dataset
    preparation and a training step need a model, not a good one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, num_key_value_heads=1, tie_word_embeddings=True, **sizes))


@pytest.fixture(scope="module")
def families(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model directory per family: tokenizer (with the family's plain template) and a tiny model."""
    from transformers import AutoTokenizer

    out = {}
    for name, (tokens, eos, template, _, _, _) in FAMILIES.items():
        tok = AutoTokenizer.from_pretrained(base_model)
        if tokens:
            tok.add_special_tokens({"additional_special_tokens": tokens})
            tok.bos_token, tok.eos_token, tok.chat_template = tokens[0], eos, template
        path = tmp_path_factory.mktemp(name)
        tok.save_pretrained(path)
        tiny_model(len(tok)).save_pretrained(path)
        out[name] = path
    return out


def train_config(tmp: Path, **kw) -> TrainConfig:
    """Unpacked by default, so each trainer row is one sequence."""
    rnd = SFTRound(data=str(tmp / "d.jsonl"), init=str(tmp / "base"))
    return TrainConfig(rounds={"r1": rnd}, **({"max_length": 256, "packing": False} | kw))


def marked_override(family: str, tmp: Path) -> dict[str, str]:
    """The written families' marked templates go in as train.chat_template; SmolLM2 gets tunefold's own copy."""
    marked = FAMILIES[family][3]
    if marked is None:
        return {}
    path = tmp / f"{family}_marked.jinja"
    path.write_text(marked)
    return {"chat_template": str(path)}


def trainer_rows(
    model_dir: Path, cfg: TrainConfig, tmp: Path, conversations: list[Conversation] = CONVERSATIONS
) -> tuple[list[dict[str, Any]], tuple[PreTrainedTokenizerBase, TemplateChoice, Fit]]:
    """The rows trl's SFTTrainer trains on (input_ids, labels), prepared exactly as the stage prepares them."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tasks.sft import sft_rows
    from tunefold.train.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    rows, choice, fit = sft_rows(cfg, tok, conversations)
    tok.chat_template = choice.template
    args = SFTConfig(
        output_dir=str(tmp / "out"),
        max_length=cfg.max_length,
        packing=cfg.packing,
        report_to="none",
        use_cpu=True,
        bf16=False,
        **choice.trainer_args(),
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return list(trainer.train_dataset), (tok, choice, fit)


def loss_spans(row: dict[str, Any]) -> list[list[int]]:
    """Runs of consecutive tokens that carry loss (label == token; -100 elsewhere)."""
    spans, run = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        assert label in (token, -100)
        if label != -100:
            run.append(token)
        elif run:
            spans.append(run)
            run = []
    return [*spans, run] if run else spans


def expected_answers(family: str) -> list[str]:
    _, _, _, _, end, trimmed = FAMILIES[family]
    answers = [m["content"] for c in CONVERSATIONS for m in c if m["role"] == "assistant"]
    return [(a.strip() if trimmed else a) + end for a in answers]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_paths_train_exactly_the_answers_and_their_end_of_turn_token(
    family: str, families: dict[str, Path], tmp_path: Path
) -> None:
    """Markers (one sequence per conversation) and the per-turn fallback put loss on the same tokens: each answer
    and its end-of-turn token, nothing from system or user turns, role headers, or what follows the end token."""
    override = marked_override(family, tmp_path)
    markers, (tok, choice, _) = trainer_rows(families[family], train_config(tmp_path, **override), tmp_path)
    assert choice.loss_mask == "generation_markers"
    assert choice.source == override.get("chat_template", "tunefold:smollm2_training.jinja")
    assert len(markers) == len(CONVERSATIONS)
    # auto falls back for the written families (no marked template known); SmolLM2's has one, so it is forced
    forced = {"loss_mask": "prompt_completion"} if family == "chatml" else {}
    fallback, (_, choice, fit) = trainer_rows(families[family], train_config(tmp_path, **forced), tmp_path)
    assert (choice.loss_mask, choice.source) == ("prompt_completion", "model")
    assert len(fallback) == fit.stats["sequences"] == 4  # one sequence per assistant turn

    want = expected_answers(family)
    marker_spans = [s for row in markers for s in loss_spans(row)]
    assert [tok.decode(s) for s in marker_spans] == want
    per_turn = [loss_spans(row) for row in fallback]
    assert all(len(s) == 1 for s in per_turn)  # each sequence trains its own answer only
    assert [s[0] for s in per_turn] == marker_spans  # the same token ids, not only the same text
    for row in fallback:  # a sequence ends on its end-of-turn token: what follows it is never generated
        assert tok.decode(row["input_ids"][-1:]) == FAMILIES[family][4]


@pytest.mark.parametrize("family", ["chatml", "headers"])
def test_the_per_turn_prompt_is_the_inference_prompt(family: str, families: dict[str, Path], tmp_path: Path) -> None:
    """What precedes each trained answer is token for token what the model is given at inference, even where the
    answer's first token would merge with the end of the prompt (ChatML's newline before an answer that starts
    with newlines: the whole rendering tokenizes them as one token, which the marker path trains)."""
    from tunefold.train.models import load_tokenizer

    newlines = [{"role": "user", "content": "Two lines?"}, {"role": "assistant", "content": "\n\nOne.\nTwo."}]
    conversations = [*CONVERSATIONS, newlines]
    cfg = train_config(tmp_path, loss_mask="prompt_completion")
    rows, (tok, _, _) = trainer_rows(families[family], cfg, tmp_path, conversations)
    tok = load_tokenizer(families[family])
    turns = [(c, k) for c in conversations for k, m in enumerate(c) if m["role"] == "assistant"]
    for row, (conv, k) in zip(rows, turns, strict=True):
        start = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert row["input_ids"][:start] == tok.apply_chat_template(conv[:k], add_generation_prompt=True)["input_ids"]
    answer = newlines[1]["content"].strip() if family == "headers" else newlines[1]["content"]
    assert [tok.decode(s) for s in loss_spans(rows[-1])] == [answer + FAMILIES[family][4]]


def test_packing_keeps_the_per_turn_masks(families: dict[str, Path], tmp_path: Path) -> None:
    """Packed blocks hold the same sequences with the same labels (bfd packing: whole sequences, boundaries in
    seq_lengths), so the fallback packs like the marker path."""
    cfg = train_config(tmp_path)
    unpacked, _ = trainer_rows(families["turns"], cfg, tmp_path)
    packed, _ = trainer_rows(families["turns"], cfg.model_copy(update={"packing": True}), tmp_path)
    assert len(packed) < len(unpacked)
    pieces = []
    for block in packed:
        at = 0
        for n in block["seq_lengths"]:
            pieces.append((block["input_ids"][at : at + n], block["labels"][at : at + n]))
            at += n
        assert at == len(block["input_ids"])
    assert sorted(pieces) == sorted((r["input_ids"], r["labels"]) for r in unpacked)


def test_a_prompt_that_is_not_a_prefix_is_refused(families: dict[str, Path], tmp_path: Path) -> None:
    """A template whose generation prompt opens an empty thinking block that the rendered answer lacks would put
    the answer after a context the model never sees: refused, naming the record and where the renderings part."""
    from tasks.sft import sft_rows
    from tunefold.train.models import load_tokenizer

    tok = load_tokenizer(families["chatml"])
    template = tmp_path / "think.jinja"
    template.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}"
    )
    cfg = train_config(tmp_path, chat_template=str(template))
    with pytest.raises(InputError, match=r"record x1, message 2: .*goes on with '<think>.*not a prefix"):
        sft_rows(cfg, tok, CONVERSATIONS, ["record x1", "record x2"])


def test_a_template_without_an_end_of_turn_token_is_refused(families: dict[str, Path], tmp_path: Path) -> None:
    from tasks.sft import sft_rows
    from tunefold.train.models import load_tokenizer

    template = tmp_path / "plain.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    cfg = train_config(tmp_path, chat_template=str(template))
    with pytest.raises(InputError, match=r"'Blue\.\\n', with no end-of-turn token after it"):
        sft_rows(cfg, load_tokenizer(families["chatml"]), CONVERSATIONS)


def test_loss_mask_setting_chooses_or_refuses_a_path(families: dict[str, Path], tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tunefold.train.models import load_tokenizer
    from tunefold.train.training import choose_template

    tok = load_tokenizer(families["headers"])
    assert choose_template(tok).loss_mask == "prompt_completion"  # also DPO's choice: the model's own template
    with pytest.raises(InputError, match=r"train\.loss_mask is markers, but .* no \{% generation %\} markers"):
        choose_template(tok, loss_mask="markers")
    plain = tmp_path / "plain.jinja"
    plain.write_text(HEADERS)
    with pytest.raises(InputError, match=r"has no \{% generation %\} markers, which train\.loss_mask: markers needs"):
        choose_template(tok, str(plain), "markers")
    assert choose_template(tok, str(plain)).loss_mask == "prompt_completion"
    smol = load_tokenizer(families["chatml"])
    assert choose_template(smol).loss_mask == "generation_markers"
    forced = choose_template(smol, loss_mask="prompt_completion")
    assert (forced.loss_mask, forced.template) == ("prompt_completion", smol.chat_template)
    with pytest.raises(ValidationError, match="loss_mask"):
        train_config(tmp_path, loss_mask="answers")


def test_length_accounting_counts_each_turn_sequence(families: dict[str, Path], tmp_path: Path) -> None:
    """On the fallback a conversation is as long as its longest sequence, and `tokens` counts every sequence
    (prompts repeat): what the trainer really reads. A turn whose prompt alone fills max_length is dropped."""
    # the turn family's sequences are 17, 22, 41 and 57 tokens; the last two belong to the long conversation, and
    # the last one's prompt (53 tokens) alone exceeds 40
    cfg = train_config(tmp_path, max_length=40)
    rows, (_, _, fit) = trainer_rows(families["turns"], cfg, tmp_path)
    lengths = sorted(len(r["input_ids"]) for r in rows)
    assert lengths == [17, 22, 40]  # trl truncated the 41-token one; the one with nothing left to learn is gone
    assert fit.stats["tokens"] == sum(lengths) and fit.stats["sequences"] == len(rows)
    assert (fit.stats["over_max_length"], fit.stats["truncated"], fit.stats["cut_to_prompt"]) == (1, 1, 1)
    assert all(any(label != -100 for label in r["labels"]) for r in rows)
    rows, (_, _, fit) = trainer_rows(families["turns"], cfg.model_copy(update={"overlong": "reject"}), tmp_path)
    assert (fit.rejected, fit.stats["rejected_overlong"], fit.stats["cut_to_prompt"]) == ([1], 1, 0)
    assert [len(r["input_ids"]) for r in rows] == [17] and fit.stats["tokens"] == 17


def test_sft_stage_trains_a_family_without_a_marked_template(families: dict[str, Path], tmp_path: Path) -> None:
    """The stage end to end on the header family: auto falls back, packs, trains, and says so in its metrics."""
    from tasks.sft import train_sft

    records = [make_record([Message(**m) for m in c], f"t:{i}") for i, c in enumerate(CONVERSATIONS)]
    write_jsonl(tmp_path / "d.jsonl", records)
    rnd = SFTRound(data=str(tmp_path / "d.jsonl"), init=str(families["headers"]), max_steps=1)
    cfg = TrainConfig(rounds={"r1": rnd}, max_length=128, batch_size=2)
    m = train_sft(cfg, "r1", families["headers"], tmp_path / "a", tmp_path / "ck", tmp_path / "c.tsv")
    assert (m["loss_mask"], m["chat_template"], m["packing"]) == ("prompt_completion", "model", True)
    assert (m["conversations"], m["sequences"], m["steps"]) == (2, 4, 1) and m["real_tokens"] == m["tokens"]
    assert json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())  # the adapter carries the tokenizer
    assert (tmp_path / "a" / "chat_template.jinja").read_text() == HEADERS  # the model's own: it renders inference
