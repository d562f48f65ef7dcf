"""A deterministic user reward for the pair-builder tests: splits random completions ~50/50."""


def even_length(completions, answers, **kw):
    return [float(len(text) % 2 == 0) for text in completions]
