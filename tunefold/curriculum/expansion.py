"""TAPIR's expansion: the teacher writes new instructions of a task type, shown the hardest ones so far, and answers
them; a new instruction is kept when the student finds it hard (MFD above `min_mfd`) and it repeats no instruction
of the type. Who the student is belongs to the caller: `plan_curriculum` measures with the base model through the
gateway, `curriculum_round` with the previous round's adapter. Every attempt is logged with its decision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunefold.curriculum.planning import mfd_of
from tunefold.curriculum.prompts import EXPAND_INSTRUCTION, InstructionReply, expansion_text
from tunefold.curriculum.taxonomy import TASK_DESCRIPTIONS, instruction_key, instruction_text
from tunefold.data.records import Message, Record, make_record
from tunefold.llm import ChatRequest, Gateway

# new records (instruction + the teacher's answer) -> each with its MFD measured, or None and why not
Measure = Callable[[list[Record]], list[tuple[Record | None, str | None]]]


@dataclass
class Expansion:
    gw: Gateway
    measure: Measure
    min_mfd: float
    origin: str = "tapir_expansion"
    log: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, task: str, ranked: list[Record], extra: int) -> list[Record]:
        """Up to `extra` new instructions of `task`; `ranked` are the type's records, hardest first."""
        examples = [instruction_text(r, limit=600) for r in ranked[:3]]
        seen = {instruction_key(r) for r in ranked}

        def write(k: int) -> tuple[Record | None, dict[str, Any]]:
            row: dict[str, Any] = {"task_type": task, "attempt": k}
            shown = expansion_text(task, TASK_DESCRIPTIONS.get(task, task), examples, k, extra)
            req = ChatRequest(
                messages=[{"role": "system", "content": EXPAND_INSTRUCTION}, {"role": "user", "content": shown}]
            )
            parsed, _ = self.gw.chat_json("teacher", req, InstructionReply, attempts=2)
            if not parsed.ok:
                return None, row | {"decision": "dropped", "reason": "the teacher wrote no usable instruction"}
            instruction = parsed.value.instruction.strip()
            row["instruction"] = instruction
            answer = self.gw.answer("teacher", [{"role": "user", "content": instruction}])
            if answer is None:
                return None, row | {"decision": "dropped", "reason": "no answer from the teacher"}
            messages = [Message(role="user", content=instruction), Message(role="assistant", content=answer)]
            meta = {"task_type": task, "origin": self.origin, "source_name": "curriculum"}
            return make_record(messages, f"expand:{task}:{k}", metadata=meta), row

        written = self.gw.map("teacher", write, list(range(extra)), desc=f"expand {task}")
        new = [r for r, _ in written if r is not None]
        measured = iter(self.measure(new) if new else [])
        kept = []
        for record, row in written:
            if record is not None:
                scored, why = next(measured)
                if scored is None:
                    row |= {"decision": "dropped", "reason": why}
                elif (mfd := mfd_of(scored)) <= self.min_mfd:
                    row |= {"mfd": mfd, "decision": "dropped", "reason": f"MFD {mfd:g} <= min_mfd {self.min_mfd:g}"}
                elif instruction_key(scored) in seen:
                    row |= {"mfd": mfd, "decision": "dropped", "reason": "repeats an instruction of the type"}
                else:
                    seen.add(instruction_key(scored))
                    kept.append(scored.model_copy(update={"metadata": scored.metadata | {"target": "teacher"}}))
                    row |= {"mfd": mfd, "decision": "kept"}
            self.log.append(row)
        return kept
