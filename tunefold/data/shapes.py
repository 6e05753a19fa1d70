"""Recognising the common row shapes of instruction and preference data and converting them exactly.

Shapes: OpenAI `messages`, ShareGPT `conversations`, alpaca `instruction/input/output`, Self-Instruct seed tasks
(`instruction/instances`) and preference pairs in the three layouts of the Hub (docs/data.md has one example
row of each). A row is converted turn for turn or refused with a `RowError` that says which field and why:
a conversation is never shortened, merged or re-paired to make a row fit.
"""

from __future__ import annotations

import re
from typing import Any

from tunefold.data.records import Message

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Human/Assistant transcripts (Anthropic HH layout): every turn starts with a blank line and a speaker label.
_TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant):")
_TRANSCRIPT_START = re.compile(r"\s*Human:")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}

Conversation = tuple[list[Message], str | None]  # messages (ending with the chosen answer) and the rejected answer


class RowError(ValueError):
    """A row that cannot become a record; the message says which field and why."""


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        parts = [p.get("text") for p in value]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]  # OpenAI content parts
    raise RowError(f"{field}: expected a string, got {type(value).__name__}")


def _require(row: dict[str, Any], key: str) -> Any:
    if key not in row or row[key] is None:
        raise RowError(f"missing field {key!r}")
    return row[key]


def _optional_text(row: dict[str, Any], key: str) -> str:
    """An optional text field: absent or null mean none (a blank string adds nothing either); any other
    non-string is refused, never dropped."""
    value = row.get(key)
    return "" if value is None else _text(value, key)


def _turns(value: Any, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[Message]:
    if not isinstance(value, list):
        raise RowError(f"{field}: expected a list of turns, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowError(f"{field}[{i}]: expected an object, got {type(turn).__name__}")
        name = _require(turn, role_key)
        if not isinstance(name, str) or name.lower() not in roles:
            raise RowError(f"{field}[{i}].{role_key}: unknown role name {name!r} (known: {', '.join(roles)})")
        out.append(Message(role=roles[name.lower()], content=_text(_require(turn, text_key), f"{field}[{i}]")))
    return out


def _alpaca(row: dict[str, Any]) -> list[Message]:
    instruction = _text(_require(row, "instruction"), "instruction")
    extra = _optional_text(row, "input")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = _optional_text(row, "system")
    msgs = [Message(role="system", content=system)] if system else []
    return [
        *msgs,
        Message(role="user", content=user),
        Message(role="assistant", content=_text(_require(row, "output"), "output")),
    ]


# --- preference pairs ---------------------------------------------------------------------------------------


def is_transcript(value: Any) -> bool:
    return isinstance(value, str) and _TRANSCRIPT_START.match(value) is not None


def parse_transcript(text: str, field: str) -> list[Message]:
    """Split a `Human: ... Assistant: ...` transcript into turns; each turn's text is exactly what lies between
    its label (and the one space after it) and the next label."""
    head = _TRANSCRIPT_START.match(text)
    assert head is not None
    body = "\n\n" + text[head.end() - len("Human:") :]
    marks = list(_TRANSCRIPT_TURN.finditer(body))
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        content = body[m.end() : end]
        turns.append(Message(role=_TRANSCRIPT_ROLES[m.group(1)], content=content.removeprefix(" ")))
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            label = "Human" if turn.role == "user" else "Assistant"
            raise RowError(f"{field}: turn {i + 1} is a second {label} turn in a row; the transcript must alternate")
    return turns


def _pair_conversations(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """Two whole conversations that share everything but their final assistant answer."""
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) < 2 or conv[-1].role != "assistant":
            raise RowError(f"{field}: a whole conversation must have a prompt and end with the assistant's answer")
    if chosen[:-1] != rejected[:-1]:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False)) if a != b),
            min(len(chosen), len(rejected)) - 1,
        )
        raise RowError(
            f"chosen and rejected are different conversations: they differ at turn {turn + 1} of "
            f"{len(chosen)} and {len(rejected)}, not only in the final answer"
        )
    return chosen[:-1], chosen[-1].content, rejected[-1].content


def _answer_or_conversation(value: Any, field: str) -> list[Message] | str:
    """`chosen`/`rejected` as a string or a one-turn list (only the answer), or as a whole conversation."""
    if isinstance(value, list):
        turns = _turns(value, field, "role", "content", OPENAI_ROLES)
        if not turns or turns[-1].role != "assistant":
            raise RowError(f"{field}: the last turn must be the assistant's answer")
        if len(turns) == 1:
            return turns[0].content
        return turns
    return _text(value, field)


def _check_agrees(prompt: list[Message] | str | None, conversation: list[Message]) -> None:
    """A prompt given beside whole conversations must be their prompt: the same turns, or (as a string) the text
    of the first or the last user turn, as the Hub's converted sets write it."""
    if prompt is None:
        return
    if isinstance(prompt, list):
        if prompt == conversation:
            return
    else:
        users = [m.content.strip() for m in conversation if m.role == "user"]
        if users and prompt.strip() in (users[0], users[-1]):
            return
    raise RowError(
        "prompt does not match the conversation in chosen/rejected: as messages it must equal every turn before "
        "the answer, as a string the text of its first or last user turn"
    )


def _prompt_messages(prompt: Any) -> list[Message] | str:
    if isinstance(prompt, list):
        return _turns(prompt, "prompt", "role", "content", OPENAI_ROLES)
    text = _text(prompt, "prompt")
    if is_transcript(text):
        turns = parse_transcript(text, "prompt")
        if turns[-1].role != "assistant" or turns[-1].content.strip():
            raise RowError("prompt: a transcript prompt must end with an empty 'Assistant:' turn for the answer")
        return turns[:-1]
    return text


def _whole(side: list[Message] | str, prompt: list[Message] | str | None) -> list[Message]:
    """One side of a pair as a whole conversation: as given, or the prompt followed by the answer."""
    if isinstance(side, list):
        return side
    if prompt is None:
        raise RowError("missing field 'prompt': one side is a whole conversation, the other only an answer")
    turns = prompt if isinstance(prompt, list) else [Message(role="user", content=prompt)]
    return [*turns, Message(role="assistant", content=side)]


def _preference(row: dict[str, Any]) -> Conversation:
    """The three preference layouts: (a) prompt + answer strings, (b) prompt and/or message lists holding the
    answer or the whole conversation, (c) Human/Assistant transcripts."""
    if "chosen" not in row or "rejected" not in row:
        raise RowError(f"missing field {'chosen' if 'chosen' not in row else 'rejected'!r} of a preference pair")
    chosen_raw, rejected_raw = _require(row, "chosen"), _require(row, "rejected")
    prompt_raw = row.get("prompt")
    prompt = None if prompt_raw is None else _prompt_messages(prompt_raw)
    if is_transcript(chosen_raw) or is_transcript(rejected_raw):
        if not (is_transcript(chosen_raw) and is_transcript(rejected_raw)):
            raise RowError("one of chosen/rejected is a Human/Assistant transcript and the other is not")
        conversation, chosen, rejected = _pair_conversations(
            parse_transcript(chosen_raw, "chosen"), parse_transcript(rejected_raw, "rejected")
        )
        _check_agrees(prompt, conversation)
        return [*conversation, Message(role="assistant", content=chosen)], rejected
    c = _answer_or_conversation(chosen_raw, "chosen")
    r = _answer_or_conversation(rejected_raw, "rejected")
    if isinstance(c, list) or isinstance(r, list):
        conversation, chosen, rejected = _pair_conversations(_whole(c, prompt), _whole(r, prompt))
        _check_agrees(prompt, conversation)
        return [*conversation, Message(role="assistant", content=chosen)], rejected
    if prompt_raw is None:
        hint = ""
        if isinstance(chosen_raw, str) and "Human:" in chosen_raw and "Assistant:" in chosen_raw:
            hint = "; chosen looks like a transcript but does not start with 'Human:'"
        raise RowError(
            "missing field 'prompt': chosen/rejected are answer strings, so the prompt must be given (or give "
            "whole conversations as message lists, or Human/Assistant transcripts)" + hint
        )
    assert prompt is not None
    if is_transcript(prompt_raw):  # the prompt ends with "Assistant:", the answers carry the space after it
        c, r = c.removeprefix(" "), r.removeprefix(" ")
    return _whole(c, prompt), r


SHAPES = ("messages", "sharegpt", "preference", "self_instruct", "alpaca")


def detect_shape(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "instances" in row and "instruction" in row:
        return "self_instruct"
    if "instruction" in row:
        return "alpaca"
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise RowError(
        f"unrecognised row shape (keys: {keys}); expected `messages`, `conversations`, "
        "`prompt/chosen/rejected` (or Human/Assistant transcripts in `chosen/rejected`), "
        "`instruction/input/output` or `instruction/instances`"
    )


def convert_row(row: dict[str, Any]) -> tuple[str, list[Conversation]]:
    """Return the row's shape and its conversations as (messages, rejected) pairs (seed tasks may give several)."""
    shape = detect_shape(row)
    if shape == "messages":
        return shape, [(_turns(row["messages"], "messages", "role", "content", OPENAI_ROLES), None)]
    if shape == "sharegpt":
        return shape, [(_turns(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES), None)]
    if shape == "preference":
        return shape, [_preference(row)]
    if shape == "self_instruct":
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise RowError("instances: expected a non-empty list of {input, output}")
        out: list[Conversation] = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise RowError(f"instances[{i}]: expected an object")
            if clash := sorted({"instruction", "system"} & set(inst)):
                raise RowError(f"instances[{i}]: has its own {', '.join(clash)}; an instance holds input and output")
            out.append((_alpaca({"instruction": row["instruction"], **inst}), None))
        return shape, out
    return shape, [(_alpaca(row), None)]


def source_id(row: dict[str, Any]) -> str | int | None:
    """The row's own id, kept in the record's metadata so a record can be traced back to the dataset's row."""
    value = row.get("id")
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None
