"""Diagnostic (run from the repo root): on the held-out pairs where both answers are a
well-formed "a op b = c / Answer: c", how often does the base LM give the chosen (correct) c a
higher log-probability than the rejected c, after the same "a op b = "?"""

import json
import re

import torch

from lmpo.data.prompts import render_prompt
from lmpo.models.loading import load_model

torch.set_num_threads(2)
model, tok = load_model("embedded")
model.eval()
WELL_FORMED = re.compile(r"^\s*(\d+ [-+*] \d+ = )(-?\d+)\s*\nAnswer: -?\d+\s*$")


def text(x):
    return x if isinstance(x, str) else x[-1]["content"]


def result_logp(prefix: str, result: str) -> float:
    n = tok(prefix, return_tensors="pt").input_ids.shape[1]
    ids = tok(prefix + result + "\n", return_tensors="pt").input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp[n - 1 :].sum().item()


rows = [json.loads(line) for line in open("docs/results/preference/data/pairs_test.jsonl")]
wins = n = 0
for r in rows:
    c, x = WELL_FORMED.match(text(r["chosen"])), WELL_FORMED.match(text(r["rejected"]))
    if not (c and x):
        continue
    prefix = render_prompt(tok, r["prompt"]) + c.group(1)
    n += 1
    wins += result_logp(prefix, c.group(2)) > result_logp(prefix, x.group(2))
print(
    f"{n} of {len(rows)} held-out pairs have two well-formed answers; the base LM prefers the correct result in {wins / n:.1%}"
)
