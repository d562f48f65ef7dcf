"""Write the synthetic example preference files shipped in src/lmpo/data/files/.

Problems come from the built-in arithmetic task's *train* split (difficulty 1, default
prompt style), so held-out task accuracy on its test split measures generalisation. The
preferred answer is the worked solution in the task's own format (``a + b = c`` then
``Answer: c``); the dispreferred one makes an off-by-a-few arithmetic slip in the same format.

    example_pairs.jsonl     200 pairs {prompt, chosen, rejected}
    example_feedback.jsonl  200 rows {prompt, completion, label}, other problems, half desirable

Real preference data for a model usually comes from the model itself: `lmpo pairs`.
Run: python scripts/make_example_preferences.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lmpo.data.tasks import load_task

OUT = Path(__file__).resolve().parents[1] / "src" / "lmpo" / "data" / "files"


def worked(example, value: int) -> str:
    return f"{example.meta['key']} = {value}\nAnswer: {value}"


def main() -> None:
    rng = random.Random(0)
    problems = load_task("arithmetic", "train", 400, seed=0, difficulty=1)
    pairs, feedback = [], []
    for i, ex in enumerate(problems):
        right = int(ex.answer)
        wrong = right + rng.choice([-1, 1]) * rng.randint(1, 10)
        if i < 200:
            pairs.append(
                {
                    "id": f"pair-{i:03d}",
                    "prompt": ex.prompt,
                    "chosen": worked(ex, right),
                    "rejected": worked(ex, wrong),
                }
            )
        else:
            good = i % 2 == 0
            feedback.append(
                {
                    "id": f"feedback-{i - 200:03d}",
                    "prompt": ex.prompt,
                    "completion": worked(ex, right if good else wrong),
                    "label": good,
                }
            )
    for name, rows in (("example_pairs.jsonl", pairs), ("example_feedback.jsonl", feedback)):
        (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {OUT / name}")


if __name__ == "__main__":
    main()
