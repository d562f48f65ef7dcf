"""A user reward module (imported by path in the tests): varies across random completions."""


def vowel_count(completions, answers, **kw):
    return [float(sum(c in "aeiou" for c in text)) for text in completions]
