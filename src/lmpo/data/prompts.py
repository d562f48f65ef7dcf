"""Turn an Example's prompt into the exact text the model continues."""

from __future__ import annotations

from lmpo.data.examples import Example, to_messages


def render_prompt(tokenizer, example: Example, system_prompt: str | None = None) -> str:
    """Apply the tokenizer's chat template (instruct models); plain text otherwise."""
    messages = to_messages(example.prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"
