"""Real trl/peft training steps on the embedded SmolLM2 checkpoint, on CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tunefold.config import DPOSettings, LoraSettings, SFTRound, TrainConfig
from tunefold.data.records import Message, make_record
from tunefold.errors import InputError
from tunefold.io import write_jsonl

pytestmark = pytest.mark.slow

QA = [
    ("What colour is the sky on a clear day?", "Blue."),
    ("What is the capital of France?", "Paris."),
    ("How many legs does a spider have?", "Eight."),
    ("What is 2 plus 3?", "Five."),
    ("Which animal says moo?", "A cow."),
    ("What is frozen water called?", "Ice."),
    ("What is the opposite of hot?", "Cold."),
    ("How many days are in a week?", "Seven."),
]
HELD_OUT_PAIRS = [  # (messages, source, rejected): questions the toy set does not have
    ([Message(role="user", content=q), Message(role="assistant", content=a)], f"v:{i}", bad)
    for i, (q, a, bad) in enumerate(
        [
            ("What colour is grass?", "Green.", "Banana."),
            ("How many wheels does a bicycle have?", "Two.", "Purple, probably."),
            ("What do bees make?", "Honey.", "Ninety."),
        ]
    )
]
BAD = ["I am not sure, it might depend on many things and I cannot say.", "Banana.", "Purple, probably.", "Ninety."]


def write_data(path: Path, prefs: bool = False) -> Path:
    rows = []
    for i, (q, a) in enumerate(QA):
        rej = BAD[i % len(BAD)] if prefs else None
        msgs = [Message(role="user", content=q), Message(role="assistant", content=a)]
        rows.append(make_record(msgs, f"t:{i}", rejected=rej, metadata={"source_name": "toy"}))
    write_jsonl(path, rows)
    return path


def held_out(path: Path, pairs: bool) -> Path:
    """HELD_OUT_PAIRS as records: conversations for SFT, preference pairs for DPO."""
    write_jsonl(path, [make_record(msgs, src, rejected=bad if pairs else None) for msgs, src, bad in HELD_OUT_PAIRS])
    return path


def config(data: Path, init: Path, **round_kw) -> TrainConfig:
    rnd = SFTRound(data=str(data), init=str(init), **({"epochs": 1, "learning_rate": 2e-3, "max_steps": 6} | round_kw))
    return TrainConfig(
        lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        max_length=128,
        batch_size=2,
        save_steps=2,
        logging_steps=1,
        rounds={"r1": rnd},
    )


def assistant_loss(model, tokenizer, template: str) -> float:
    """Mean NLL on the assistant tokens of the toy set."""
    import torch

    losses = []
    for q, a in QA:
        conv = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        enc = tokenizer.apply_chat_template(
            conv, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.clone()
        labels[0, torch.tensor(enc["assistant_masks"]) == 0] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def sft_run(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tasks.sft import train_sft

    work = tmp_path_factory.mktemp("sft")
    data = write_data(work / "data.jsonl", prefs=True)
    cfg = config(data, base_model)
    metrics = train_sft(cfg, "r1", base_model, work / "adapter", work / "ckpt", work / "loss.tsv")
    return {"work": work, "data": data, "cfg": cfg, "metrics": metrics}


def test_sft_trains_assistant_tokens_and_lowers_loss(sft_run: dict, base_model: Path) -> None:
    from peft import PeftModel

    from tunefold.train.models import load_model, load_tokenizer
    from tunefold.train.training import training_template

    m, work = sft_run["metrics"], sft_run["work"]
    assert m["steps"] == 6 and m["chat_template"] == "tunefold:smollm2_training.jinja"
    assert m["loss_mask"] == "generation_markers" and m["sequences"] == len(QA)
    assert m["real_tokens"] > 0 and m["real_tokens_per_second"] > 0
    curve = (work / "loss.tsv").read_text().splitlines()
    assert curve[0].startswith("step\tloss") and len(curve) == 7
    tok = load_tokenizer(base_model)
    template = training_template(tok)[0]
    before = assistant_loss(load_model(base_model), tok, template)
    trained = PeftModel.from_pretrained(load_model(base_model), str(work / "adapter"))
    after = assistant_loss(trained, tok, template)
    assert after < before * 0.8, (before, after)
    saved = (work / "adapter" / "chat_template.jinja").read_text()
    assert "{% generation %}" in saved  # the saved tokenizer carries the training template (same rendering)


def test_training_template_renders_like_the_models_own(base_model: Path) -> None:
    from tunefold.train.models import load_tokenizer
    from tunefold.train.training import training_template

    tok = load_tokenizer(base_model)
    template, _ = training_template(tok)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    convs.append([{"role": "system", "content": "Be terse."}, *convs[0], {"role": "user", "content": "And?"}])
    for conv in convs:
        for prompt in (False, True):
            msgs = conv[:-1] if prompt else conv
            own = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)
            assert (
                tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt, chat_template=template)
                == own
            )
    enc = tok.apply_chat_template(convs[0], chat_template=template, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, keep in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if keep]
    assert tok.decode(trained) == "Blue.<|im_end|>"  # the answer and its end token carry the loss, nothing else


def test_trained_model_stops_after_a_short_answer(sft_run: dict, base_model: Path) -> None:
    import torch

    from tunefold.train.models import load_tokenizer, load_trained

    tok = load_tokenizer(base_model)
    model = load_trained(base_model, sft_run["work"] / "adapter")
    stops = 0
    for q, _ in QA:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)
        ids = torch.tensor([prompt["input_ids"]])
        out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1] :].tolist()
        stops += tok.eos_token_id in new and new.index(tok.eos_token_id) <= 8
    assert stops >= len(QA) - 1, f"only {stops}/{len(QA)} short answers ended with <|im_end|>"


def test_adapter_reloads_merges_and_exports_with_the_same_logits(sft_run: dict, base_model: Path) -> None:
    import torch
    from peft import PeftModel

    from tunefold.train.models import load_model, load_trained

    ids = torch.tensor([[1, 504, 3458, 314, 260, 3444, 282, 4649, 47]])
    with torch.no_grad():
        adapter = PeftModel.from_pretrained(load_model(base_model), str(sft_run["work"] / "adapter"))(ids).logits
        merged = load_trained(base_model, sft_run["work"] / "adapter")(ids).logits
        base = load_model(base_model)(ids).logits
    assert torch.allclose(adapter, merged, atol=1e-4)
    assert not torch.allclose(adapter, base, atol=1e-3)
    out = sft_run["work"] / "merged"
    cmd = [
        sys.executable,
        "-m",
        "tunefold.cli",
        "export",
        str(sft_run["work"] / "adapter"),
        str(out),
        "--base",
        str(base_model),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    with torch.no_grad():
        exported = load_model(out)(ids).logits
    assert torch.allclose(exported, merged, atol=1e-4)


def test_second_round_continues_from_the_first(sft_run: dict, base_model: Path) -> None:
    from tasks.sft import train_sft

    work = sft_run["work"]
    r2 = SFTRound(data=str(sft_run["data"]), init=str(work / "adapter"), epochs=1, learning_rate=1e-3, max_steps=2)
    cfg = sft_run["cfg"].model_copy(update={"rounds": {"r2": r2}})
    m = train_sft(cfg, "r2", base_model, work / "adapter2", work / "ckpt2", work / "loss2.tsv")
    assert m["first_loss"] < sft_run["metrics"]["first_loss"] * 0.8  # it starts where round 1 ended


def test_a_round_is_validated_on_held_out_data_and_keeps_its_best_checkpoint(base_model: Path, tmp_path: Path) -> None:
    """Trained at a high rate on wrong answers, the model gets worse on held-out questions with right answers: the
    held-out loss is measured at the start and every step, and the adapter written is the checkpoint with the lowest
    held-out loss (byte for byte its weights). Trained on right answers with `keep: last`, the last step is written.
    The gate then refuses the wrong-answer model against the right-answer one although its judge scores are
    higher: the held-out numbers are the real ones of these two runs."""
    from safetensors.torch import load_file

    from tasks.sft import train_sft
    from tunefold.config import GateSettings
    from tunefold.cycle.promotion import Scores, decide, heldout_scores

    wrong = [
        make_record([Message(role="user", content=q), Message(role="assistant", content="Banana.")], f"w:{i}")
        for i, (q, _) in enumerate(QA)
    ]
    val = held_out(tmp_path / "val.jsonl", pairs=False)
    write_jsonl(tmp_path / "wrong.jsonl", wrong)
    cfg = config(tmp_path / "wrong.jsonl", base_model, max_steps=4, learning_rate=5e-3)
    cfg = cfg.model_copy(update={"save_steps": 1, "eval_steps": 1, "keep": "best"})
    m = train_sft(cfg, "r1", base_model, tmp_path / "a", tmp_path / "ca", tmp_path / "a.tsv", val, tmp_path / "v.tsv")
    h = m["heldout"]
    assert h["items"] == len(HELD_OUT_PAIRS) and h["evaluations"] == 5  # the start and steps 1-4
    rows = [line.split("\t") for line in (tmp_path / "v.tsv").read_text().splitlines()[1:]]
    losses = {int(step): float(loss) for step, loss in rows}
    assert set(losses) == {0, 1, 2, 3, 4} and losses[0] == pytest.approx(h["start"]["loss"], abs=1e-4)
    assert h["start"]["perplexity"] == pytest.approx(math.exp(h["start"]["loss"]), rel=1e-3)
    best = min((1, 2, 3, 4), key=lambda s: losses[s])
    assert h["kept_checkpoint"] == f"checkpoint-{best}" and h["kept"]["loss"] == pytest.approx(losses[best], abs=1e-4)
    assert h["last"]["loss"] == pytest.approx(losses[4], abs=1e-4) and m["keep"] == "best"
    written = load_file(tmp_path / "a" / "adapter_model.safetensors")
    chosen = load_file(tmp_path / "ca" / f"checkpoint-{best}" / "adapter_model.safetensors")
    assert written.keys() == chosen.keys() and all((written[k] == chosen[k]).all() for k in written)

    right = cfg.model_copy(
        update={
            "keep": "last",
            "rounds": {"r1": cfg.rounds["r1"].model_copy(update={"data": str(write_data(tmp_path / "right.jsonl"))})},
        }
    )
    good = train_sft(
        right, "r1", base_model, tmp_path / "b", tmp_path / "cb", tmp_path / "b.tsv", val, tmp_path / "w.tsv"
    )
    assert good["heldout"]["kept_checkpoint"] == "last step" and good["heldout"]["kept"] == good["heldout"]["last"]
    assert not good["heldout"]["worse_than_start"] and h["worse_than_start"] == (h["kept"]["loss"] > h["start"]["loss"])
    assert h["kept"]["loss"] > good["heldout"]["kept"]["loss"] + 0.02  # the premise: wrong answers did harm

    def scores(mt_bench: float, metrics: dict) -> Scores:
        return Scores(mt_bench, 10, 0, {}, 0, 0, judge="j", judge_trusted=True, heldout=heldout_scores(metrics, None))

    gate = GateSettings(min_heldout_items=len(HELD_OUT_PAIRS))  # a toy held-out set of 3 conversations
    d = decide(scores(9.5, m), scores(5.0, good), gate, "model-v1")  # the judge prefers the challenger
    assert not d.promote and d.reason.startswith("rejected by heldout_sft_loss"), d.reason
    d = decide(scores(9.5, m), scores(5.0, good), GateSettings(), "model-v1")  # the default asks for 8 items
    assert "fewer than gate.min_heldout_items" in next(c.note for c in d.checks if c.name == "heldout_sft_loss")
    other_val = good | {"heldout": good["heldout"] | {"data_sha256": "another split"}}
    d = decide(scores(9.5, m), scores(5.0, other_val), gate, "model-v1")
    assert "different held-out data" in next(c.note for c in d.checks if c.name == "heldout_sft_loss")


def test_dpo_raises_the_reward_margin(sft_run: dict, base_model: Path) -> None:
    from tasks.dpo import train_dpo
    from tunefold.train.models import load_trained

    work = sft_run["work"]
    cfg = DPOSettings(
        init=str(work / "adapter"),
        data=str(sft_run["data"]),
        beta=0.1,
        epochs=1,
        learning_rate=5e-4,
        max_steps=8,
        batch_size=2,
        max_length=128,
    )
    val = held_out(work / "val_pairs.jsonl", pairs=True)
    m = train_dpo(
        cfg, sft_run["cfg"], base_model, work / "dpo", work / "dpo_ckpt", work / "dpo.tsv", val, work / "dpo_val.tsv"
    )
    assert m["pairs"] == len(QA) and m["steps"] == 8
    assert m["last_reward_margin"] > m["first_reward_margin"] + 0.05, m
    # held out: trl's own eval metrics before (policy = reference: margin 0, no pair won) and after training
    h = m["heldout"]
    assert h["items"] == len(HELD_OUT_PAIRS) and h["start"]["reward_margin"] == 0 == h["start"]["reward_accuracy"]
    assert all(math.isfinite(v) for side in ("start", "last", "kept") for v in h[side].values())
    assert h["kept"] == h["last"] and h["kept_checkpoint"] == "last step"  # DPO keeps its last step
    rows = (work / "dpo_val.tsv").read_text().splitlines()
    assert rows[0] == "step\teval_loss\teval_rewards_accuracies\teval_rewards_margins" and rows[1].startswith("0\t")
    assert not (work / "dpo" / "ref").exists()  # the frozen reference copy is not part of the output
    load_trained(base_model, work / "dpo")  # base + the DPO-trained SFT adapter
    # a training pair whose prompt is held out (here as a plain conversation, so no pair is held out) is dropped,
    # written with its reason, and the held-out curve is its header alone
    q0 = [Message(role="user", content=f"  {QA[0][0].upper()}"), Message(role="assistant", content="Azure.")]
    write_jsonl(work / "val_sft.jsonl", [make_record(q0, "v:0")])
    half = train_dpo(
        cfg.model_copy(update={"data_fraction": 0.5, "max_steps": 1}),
        sft_run["cfg"],
        base_model,
        work / "dpo_half",
        work / "dpo_half_ckpt",
        work / "dpo_half.tsv",
        work / "val_sft.jsonl",
        work / "dpo_half_val.tsv",
    )
    assert half["pairs"] == 4 == math.ceil(0.5 * (len(QA) - 1)) and half["dropped_heldout_prompts"] == 1
    dropped = [json.loads(x) for x in (work / "dpo_half" / "rejected.jsonl").read_text().splitlines()]
    assert [d["messages"][0]["content"] for d in dropped] == [QA[0][0]] and "held out" in dropped[0]["reason"]
    assert half["heldout"]["items"] == 0 and (work / "dpo_half_val.tsv").read_text() == "step\n"
    with pytest.raises(InputError, match="no preference pairs from nope"):
        train_dpo(
            cfg.model_copy(update={"sources": ["nope"]}),
            sft_run["cfg"],
            base_model,
            work / "x",
            work / "y",
            work / "z.tsv",
        )


def test_dpo_reference_is_the_sft_model_before_and_after_training(sft_run: dict, base_model: Path) -> None:
    """trl's reference log-probs equal those of the SFT model (base + SFT adapter merged, loaded on its own), not the
    base model's, and stay so after the policy has trained (the reference adapter is frozen). No 4-bit on the CPU:
    the adapter logic is the same one QLoRA uses, with nothing merged into quantised weights."""
    import torch

    from tasks.dpo import dpo_trainer, preference_dataset
    from tunefold.data.records import read_records
    from tunefold.train.device import plan_device
    from tunefold.train.models import load_model, load_tokenizer, load_trained
    from tunefold.train.training import training_template

    work = sft_run["work"]
    cfg = DPOSettings(
        init=str(work / "adapter"), data=str(sft_run["data"]), learning_rate=5e-3, max_steps=2, max_length=128
    )
    tokenizer = load_tokenizer(base_model)
    tokenizer.chat_template = training_template(tokenizer)[0]
    dataset = preference_dataset(read_records(sft_run["data"]))
    trainer = dpo_trainer(cfg, sft_run["cfg"], plan_device("cpu"), base_model, work / "ref_ckpt", dataset, tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))

    def summed_logps(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token_logps * batch["completion_mask"][:, 1:]).sum(1)

    def reference() -> torch.Tensor:
        trainer.model.eval()
        return torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))

    sft, base = summed_logps(load_trained(base_model, work / "adapter")), summed_logps(load_model(base_model))
    assert (sft - base).abs().max() > 0.5  # the SFT delta is large enough for the check to mean something
    assert torch.allclose(reference(), sft, atol=1e-3), (reference(), sft)
    trainer.train()
    assert torch.allclose(reference(), sft, atol=1e-3)
    trainer.model.eval()
    with torch.no_grad():
        policy = summed_logps(trainer.model)
    assert (policy - sft).abs().max() > 0.05  # the policy moved, the reference did not


def test_dpo_from_the_base_model_trains_a_fresh_adapter_against_the_base(sft_run: dict, base_model: Path) -> None:
    """`dpo.init` = the base model (the DPO paper's setting): the reference log-probs are the base model's and stay
    so; the policy moves; the stage writes an adapter that loads on the base and says what its reference was."""
    import torch

    from tasks.dpo import dpo_trainer, preference_dataset, train_dpo
    from tunefold.data.records import read_records
    from tunefold.train.device import plan_device
    from tunefold.train.models import load_model, load_tokenizer, load_trained
    from tunefold.train.training import training_template

    work = sft_run["work"]
    cfg = DPOSettings(init=str(base_model), data=str(sft_run["data"]), learning_rate=5e-3, max_steps=2, max_length=128)
    tokenizer = load_tokenizer(base_model)
    tokenizer.chat_template = training_template(tokenizer)[0]
    dataset = preference_dataset(read_records(sft_run["data"]))
    trainer = dpo_trainer(cfg, sft_run["cfg"], plan_device("cpu"), base_model, work / "b_ckpt", dataset, tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    base = load_model(base_model)
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    expected = (token_logps * batch["completion_mask"][:, 1:]).sum(1)

    def reference() -> torch.Tensor:
        trainer.model.eval()
        return torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))

    assert torch.allclose(reference(), expected, atol=1e-3), (reference(), expected)
    trainer.train()
    assert torch.allclose(reference(), expected, atol=1e-3)
    m = train_dpo(cfg, sft_run["cfg"], base_model, work / "dpo_b", work / "dpo_b_ckpt", work / "dpo_b.tsv")
    assert m["steps"] == 2 and m["reference"] == "the base model" and m["init"] == str(base_model)
    load_trained(base_model, work / "dpo_b")
    with pytest.raises(InputError, match="neither the base model"):
        train_dpo(
            cfg.model_copy(update={"init": str(work)}), sft_run["cfg"], base_model, work / "x", work / "y", work / "z"
        )


def test_packed_batches_match_separate_sequences(base_model: Path) -> None:
    """Padding-free packing on CPU attends within each conversation only (position ids restart per sequence).

    transformers builds the block-diagonal mask only without a KV cache; trl's SFTTrainer passes use_cache=False
    in training, as here. With the cache on, the second sequence would attend to the first.
    """
    import torch

    from tunefold.train.models import load_model

    model = load_model(base_model)
    a, b = torch.tensor([[1, 504, 3458, 314, 260]]), torch.tensor([[1, 1205, 314, 4649, 47, 2367, 30]])
    packed = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])]).unsqueeze(0)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=pos, use_cache=False).logits
        apart = torch.cat([model(input_ids=a).logits, model(input_ids=b).logits], dim=1)
    assert torch.allclose(together, apart, atol=1e-4)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(base_model: Path, tmp_path: Path) -> None:
    from tasks.sft import train_sft

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = write_data(tmp_path / "d.jsonl")
    cases = [
        (config(empty, base_model), base_model, "is empty: nothing to train on"),
        (config(data, base_model), tmp_path / "no-model", "does not exist|neither"),
        (
            config(data, base_model).model_copy(update={"lora": LoraSettings(target_modules=["q_proj", "qkv_magic"])}),
            base_model,
            "qkv_magic not found in LlamaForCausalLM; its projection modules are: down_proj",
        ),
        (
            config(data, base_model).model_copy(update={"max_length": 16, "overlong": "reject"}),
            base_model,
            "no conversation fits train.max_length=16",
        ),
    ]
    for cfg, base, message in cases:
        with pytest.raises(InputError, match=message):
            train_sft(cfg, "r1", base, tmp_path / "out", tmp_path / "ck", tmp_path / "c.tsv")


def test_overlong_rows_are_counted_or_rejected(base_model: Path, tmp_path: Path) -> None:
    from tasks.sft import train_sft

    data = write_data(tmp_path / "d.jsonl")
    long = make_record(
        [
            Message(role="user", content="Tell me a long story."),
            Message(role="assistant", content="Once upon a time " * 60),
        ],
        "t:long",
    )
    with data.open("a") as f:
        f.write(long.model_dump_json() + "\n")
    cfg = config(data, base_model, max_steps=1)
    m = train_sft(cfg, "r1", base_model, tmp_path / "a", tmp_path / "ca", tmp_path / "a.tsv")
    assert (m["over_max_length"], m["truncated"], m["rejected_overlong"]) == (1, 1, 0)
    cfg = cfg.model_copy(update={"overlong": "reject"})
    m = train_sft(cfg, "r1", base_model, tmp_path / "b", tmp_path / "cb", tmp_path / "b.tsv")
    assert (m["truncated"], m["rejected_overlong"], m["conversations"]) == (0, 1, len(QA) + 1)
    dropped = [json.loads(x) for x in (tmp_path / "b" / "rejected.jsonl").read_text().splitlines()]
    assert [d["id"] for d in dropped] == [long.id] and "max_length=128" in dropped[0]["reason"]


# --- kill and resume ---------------------------------------------------------------------------------------------


def stage_params(tmp_path: Path, data: Path, base: Path, lr: float, processes: int = 1) -> Path:
    train = config(data, base, max_steps=8, learning_rate=lr).model_copy(update={"processes": processes})
    params = {"ingest": {"sources": [{"path": "unused.jsonl"}]}, "train": train.model_dump(mode="json")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_sft(
    tmp_path: Path, params: Path, base: Path, env: dict | None = None, extra: tuple[str, ...] = (), **popen
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "tasks.sft",
        "--params",
        str(params),
        "--round",
        "r1",
        "--base",
        str(base),
        "--out",
        str(tmp_path / "adapter"),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--curve",
        str(tmp_path / "loss.tsv"),
        "--metrics",
        str(tmp_path / "m.json"),
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, **popen)


def test_a_checkpoint_torn_by_a_kill_while_saving_is_skipped(tmp_path: Path) -> None:
    """A SIGKILL while the Trainer writes checkpoint-N leaves its directory without a (whole) trainer_state.json,
    which it writes last; the resume goes back to the newest finished checkpoint and the torn ones are removed."""
    from tunefold.train.training import ResumeGuard

    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (ckpt / "checkpoint-10").mkdir()
    (ckpt / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"")  # killed before the state
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    (ckpt / "run.json").write_text(json.dumps({"fingerprint": "fp", "completed": False}))
    assert ResumeGuard(ckpt, "fp", force=False).resume_point() == str(ckpt / "checkpoint-2")
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-2", "run.json"]


def test_training_stage_launches_itself_on_two_ranks_and_writes_once(base_model: Path, tmp_path: Path) -> None:
    """`train.processes: 2` makes the plain stage command (what dvc.yaml, the flow and `tunefold stage` run) start
    two data-parallel ranks, gloo on the CPU as NCCL would be on GPUs; both evaluate the held-out set, rank 0 alone
    writes the adapter, checkpoints, curves and metrics."""
    data = write_data(tmp_path / "d.jsonl")
    val = held_out(tmp_path / "val.jsonl", pairs=False)
    params = stage_params(tmp_path, data, base_model, 1e-3, processes=2)
    extra = ("--val", str(val), "--heldout-curve", str(tmp_path / "val.tsv"))
    proc = run_sft(tmp_path, params, base_model, extra=extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "launching tasks.sft on 2 ranks" in err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 8 and m["last_loss"] < m["first_loss"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "ckpt" / "run.json").read_text())["completed"]
    steps = [int(line.split("\t")[0]) for line in (tmp_path / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))
    held = [int(line.split("\t")[0]) for line in (tmp_path / "val.tsv").read_text().splitlines()[1:]]
    assert held == [0, 2, 4, 6, 8] and m["heldout"]["items"] == len(HELD_OUT_PAIRS)  # every save_steps, once each
    assert not list(tmp_path.glob("adapter.*")) and not list(tmp_path.glob(".adapter*"))  # no half-written copies


def test_a_rank_that_fails_ends_the_launch_with_its_message(base_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    params = stage_params(tmp_path, empty, base_model, 1e-3, processes=2)
    proc = run_sft(tmp_path, params, base_model, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "launching tasks.sft on 2 ranks" in err
    assert "is empty: nothing to train on" in err and "Traceback" not in err


def test_sigkill_mid_training_resumes_to_the_same_step_count(base_model: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.jsonl")
    held = ("--val", str(held_out(tmp_path / "val.jsonl", pairs=False)), "--heldout-curve", str(tmp_path / "v.tsv"))
    params = stage_params(tmp_path, data, base_model, 1e-3)
    proc = run_sft(tmp_path, params, base_model, extra=held, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "ckpt" / "checkpoint-4").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "adapter").exists()

    # a changed learning rate must not resume the unfinished run...
    changed = stage_params(tmp_path, data, base_model, 5e-4)
    refused = run_sft(tmp_path, changed, base_model, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = refused.communicate()
    assert refused.returncode == 2 and "unfinished run with different data or training params" in err
    # ...the original params resume it
    params = stage_params(tmp_path, data, base_model, 1e-3)
    done = run_sft(tmp_path, params, base_model, extra=held, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = done.communicate()
    assert done.returncode == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["steps"] == 8 and m["resumed_from_step"] >= 4
    steps = [int(line.split("\t")[0]) for line in (tmp_path / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))  # the curve spans both runs
    # so does the held-out curve: the start measured before the kill, then every save_steps of both runs
    start = json.loads((tmp_path / "ckpt" / "heldout_start.json").read_text())["eval_loss"]
    assert m["heldout"]["start"]["loss"] == round(start, 4) and m["heldout"]["evaluations"] == 5
    assert [int(r.split("\t")[0]) for r in (tmp_path / "v.tsv").read_text().splitlines()[1:]] == [0, 2, 4, 6, 8]
    forced = run_sft(
        tmp_path,
        changed,
        base_model,
        env={"TUNEFOLD_FORCE_RESTART": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert forced.wait() == 0  # the finished run is never resumed: new params start fresh without forcing
