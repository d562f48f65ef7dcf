"""Split `lmpo eval-pairs --out` scores by held-out set and by pair type (run from the repo root).

usage: python docs/results/preference/pair_breakdown.py scores.json [more scores.json ...]
where each scores.json came from `lmpo eval-pairs MODEL pairs_all.jsonl --out scores.json`
and pairs_all.jsonl = data/pairs_test.jsonl + data/pairs_test_more.jsonl.
"""

import json
import re
import sys

DATA = "docs/results/preference/data"
WELL_FORMED = re.compile(r"^\s*(\d+ [-+*] \d+ = )(-?\d+)\s*\nAnswer: -?\d+\s*$")


def text(x):
    return x if isinstance(x, str) else x[-1]["content"]


def read(path):
    return {r["id"]: r for r in map(json.loads, open(path))}


first, more = read(f"{DATA}/pairs_test.jsonl"), read(f"{DATA}/pairs_test_more.jsonl")
pairs = {**first, **more}
for scores in sys.argv[1:]:
    groups: dict[str, list[bool]] = {}
    for r in json.load(open(scores))["rows"]:
        p, right = pairs[r["id"]], r["chosen_reward"] > r["rejected_reward"]
        only_c = bool(
            WELL_FORMED.match(text(p["chosen"])) and WELL_FORMED.match(text(p["rejected"]))
        )
        for g in (
            "all",
            "first 108" if r["id"] in first else "new",
            "only c differs" if only_c else "other",
        ):
            groups.setdefault(g, []).append(right)
    print(scores, {g: f"{sum(v)}/{len(v)} = {sum(v) / len(v):.1%}" for g, v in groups.items()})
