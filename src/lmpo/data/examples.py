"""One training/evaluation example: a prompt, its gold answer, and the task that checks it.

A prompt is either a plain string (one user turn) or a list of chat messages
``{"role": "system" | "user" | "assistant", "content": str}`` ending with a user turn;
``to_messages`` turns either form into messages for ``tokenizer.apply_chat_template``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """A prompt with a verifiable answer.

    id:     stable identifier (per-prompt state such as samplers keys on it).
    prompt: a string or a list of chat messages.
    answer: the gold answer as a string (for countdown: the target; any valid
            expression is accepted by the task's ``check``).
    task:   name of the task in ``lmpo.data.tasks.TASKS`` whose ``check`` grades this
            example, or ``"file"`` for user data (graded by math-verify).
    meta:   task-specific data the checker needs (e.g. countdown numbers), plus anything
            extra a user row carried.
    """

    id: str
    prompt: str | list[dict]
    answer: str
    task: str = "file"
    meta: dict[str, Any] = field(default_factory=dict)


def to_messages(prompt: str | list[dict]) -> list[dict]:
    """A string becomes one user message; a message list is returned as a fresh copy."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
