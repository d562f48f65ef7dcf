"""Turn an Example's prompt into the exact text the model continues."""

from __future__ import annotations

from lmpo.data.examples import Example, to_messages


def prompt_messages(prompt: str | list[dict], system_prompt: str | None = None) -> list[dict]:
    """The chat messages of a prompt, with ``system_prompt`` prepended unless one is present."""
    messages = to_messages(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def render_prompt(
    tokenizer, example: Example | str | list[dict], system_prompt: str | None = None
) -> str:
    """Apply the tokenizer's chat template (instruct models); plain text otherwise.

    Takes an Example or a bare prompt (a string or a list of chat messages).
    """
    prompt = example.prompt if isinstance(example, Example) else example
    messages = prompt_messages(prompt, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"
