"""Assistant-only loss for chat templates without {% generation %} markers.

Each conversation becomes one prompt/completion sequence per assistant turn. The prompt is the turns before it as
the template renders them for generation (`add_generation_prompt=True`), i.e. exactly what the model is given at
inference; the completion is what the template then writes for the answer, up to and including its end-of-turn
token (the last added token before trailing whitespace), so the model learns to stop. trl's SFTTrainer trains these
pre-tokenized sequences with completion-only loss.

tunefold tokenizes them itself rather than handing trl conversational prompt/completion rows, because trl puts
everything after the prompt into the loss, including what a template writes after the end-of-turn token
(ChatML's newline), and it only warns when the prompt is not a prefix of prompt+completion; here that is an error,
since the mask would be wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunefold.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Conversation = list[dict[str, str]]
Example = dict[str, list[int]]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, template: str, generation_prompt: bool, where: str
) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
        )
    except (TemplateError, ValueError) as e:  # a template's raise_exception, or an empty prompt
        raise InputError(f"{where}: the chat template cannot render this conversation: {e}") from e


def _not_a_prefix(prompt: str, full: str, where: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full)))
    start = max(0, at - 30)
    return (
        f"{where}: the chat template renders the prompt of this answer (with add_generation_prompt) differently "
        f"from the conversation that contains the answer: from {prompt[start:at]!r} the prompt goes on with "
        f"{prompt[at : at + 40]!r}, the conversation with {full[at : at + 40]!r}. The prompt is not a prefix, so "
        "per-turn prompt/completion masks would be wrong for this template; write a version of it with "
        "{% generation %} markers around each answer and its end-of-turn token, and set train.chat_template to its "
        "path"
    )


def answer_end(completion: list[int], tokenizer: PreTrainedTokenizerBase, added: set[int], where: str) -> int:
    """How many completion tokens carry loss: through the end-of-turn token, i.e. the last added token that only
    whitespace follows. What a template writes after it (ChatML's newline) is never generated, so not trained."""
    for i in range(len(completion) - 1, -1, -1):
        text = tokenizer.decode([completion[i]])
        if not text.strip():
            continue
        if completion[i] in added:
            return i + 1
        break
    raise InputError(
        f"{where}: the chat template ends the assistant's answer with {tokenizer.decode(completion[-8:])!r}, with "
        "no end-of-turn token after it, so the model could not learn to stop; use a template that closes assistant "
        "turns with a special token (its eos or end-of-turn token), or one with {% generation %} markers"
    )


def prompt_completion_examples(
    conversations: list[Conversation],
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    names: list[str] | None = None,
) -> list[list[Example]]:
    """For each conversation, one sequence per assistant turn: `input_ids` (prompt, answer, end-of-turn token) and
    `completion_mask` (1 on the answer and its end-of-turn token, 0 on the prompt). `names` label conversations in
    errors (default: their 1-based position)."""
    names = names or [f"conversation {i + 1}" for i in range(len(conversations))]
    turns, prompts, fulls = [], [], []
    for c, conv in enumerate(conversations):
        for k, message in enumerate(conv):
            if message["role"] != "assistant":
                continue
            where = f"{names[c]}, message {k + 1}"
            prompt = _render(tokenizer, conv[:k], template, True, where)
            full = _render(tokenizer, conv[: k + 1], template, False, where)
            if not full.startswith(prompt):
                raise InputError(_not_a_prefix(prompt, full, where))
            turns.append((c, where))
            prompts.append(prompt)
            fulls.append(full)
    if not turns:
        return [[] for _ in conversations]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    added = set(tokenizer.get_added_vocab().values())
    out: list[list[Example]] = [[] for _ in conversations]
    for (c, where), prompt, full, p_ids, f_ids in zip(turns, prompts, fulls, prompt_ids, full_ids, strict=True):
        if f_ids[: len(p_ids)] == p_ids:
            completion = f_ids[len(p_ids) :]
        else:  # a token merged across the boundary: the completion as the model would write it, after the prompt
            completion = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        end = answer_end(completion, tokenizer, added, where)
        out[c].append({"input_ids": p_ids + completion[:end], "completion_mask": [0] * len(p_ids) + [1] * end})
    return out
