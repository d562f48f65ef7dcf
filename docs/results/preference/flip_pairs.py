"""Swap chosen/rejected in a seeded fraction of a pair file (the same pairs, noisy labels).

    python docs/results/preference/flip_pairs.py CLEAN.jsonl NOISY.jsonl 0.3

Made data/pairs_flip30.jsonl from data/pairs_train.jsonl (81 of 271 pairs flipped). Unlike
`lmpo pairs --flip`, which flips while sampling, this keeps the clean file's exact pairs, so
the clean and noisy runs differ only in the labels.
"""

import json
import sys

from lmpo.data.pairs import flip_mask

src, dst, fraction = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(src) as f:
    rows = [json.loads(line) for line in f]
for row, flip in zip(rows, flip_mask(len(rows), fraction, seed=1), strict=True):
    if flip:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        row["chosen_reward"], row["rejected_reward"] = row["rejected_reward"], row["chosen_reward"]
        row["flipped"] = True
with open(dst, "w") as out:
    out.writelines(json.dumps(row) + "\n" for row in rows)
print(f"{sum(r['flipped'] for r in rows)} of {len(rows)} pairs flipped -> {dst}")
