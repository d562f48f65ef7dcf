"""Every good x bad answer pair of each prompt, from `lmpo pairs` binary rows (no resampling).

    python docs/results/preference/all_pairs.py BINARY.jsonl PAIRS.jsonl

Binary rows are the distinct answers of each prompt in sampling order, so this gives the
pairs `lmpo pairs --pairing all` writes for the same samples. Made data/rm_pairs_all.jsonl
(the reward model's training pairs) from the binary rows of the run that made
data/pairs_train.jsonl.
"""

import json
import sys

from lmpo.data.pairs import Sample, select_pairs

src, dst = sys.argv[1], sys.argv[2]
groups: dict[str, list[dict]] = {}
with open(src) as f:
    for line in f:
        row = json.loads(line)
        groups.setdefault(row["id"], []).append(row)
out = []
for rows in groups.values():
    samples = [
        Sample(r["completion"][0]["content"], r["reward"], r["label"], 0, False) for r in rows
    ]
    for c, r in select_pairs(samples, len(rows) ** 2, "all"):
        good, bad = rows[c], rows[r]
        out.append(
            {
                "prompt": good["prompt"],
                "chosen": good["completion"],
                "rejected": bad["completion"],
                "id": good["id"],
                "answer": good["answer"],
                "chosen_reward": good["reward"],
                "rejected_reward": bad["reward"],
                "flipped": False,
            }
        )
with open(dst, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in out)
print(f"{len(out)} pairs from {len(groups)} prompts -> {dst}")
