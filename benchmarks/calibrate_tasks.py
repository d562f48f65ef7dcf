"""Calibrate a task's prompt style/difficulty on the embedded SmolLM2-135M-Instruct.

For each prompt style, on n held-out (test-split) examples:
  * greedy accuracy (one greedy completion per prompt),
  * mean sampled accuracy and the fraction of groups with mixed outcomes (some right and
    some wrong) among `--samples` completions per prompt at `--temperature` (1.0; top-k/top-p
    off), i.e. the groups that give GRPO a non-zero advantage,
  * mean completion tokens (sampled, EOS counted) and the truncation rate.

Usage:
    python benchmarks/calibrate_tasks.py --task arithmetic --difficulty 2 --n 64
    python benchmarks/calibrate_tasks.py --task countdown --difficulty 1 --styles bare,fewshot_line

Prints one markdown table row per style (append them to docs/results/task-calibration.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from lmpo.data.examples import to_messages
from lmpo.data.tasks import STYLES, TASKS, load_task, task_params
from lmpo.models.loading import load_model


def generate(
    model,
    tok,
    prompts: list[str],
    *,
    samples: int,
    greedy: bool,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    temperature: float = 1.0,
) -> tuple[list[str], list[int], list[bool]]:
    """Return decoded completions, their token counts (incl. EOS) and truncation flags."""
    texts, lengths, truncated = [], [], []
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    step = max(1, batch_size // (1 if greedy else samples))
    for i in range(0, len(prompts), step):
        enc = tok(
            prompts[i : i + step], return_tensors="pt", padding=True, add_special_tokens=False
        )
        kw = (
            dict(do_sample=False)
            if greedy
            else dict(
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                num_return_sequences=samples,
            )
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
                **kw,
            )
        comp = out[:, enc["input_ids"].shape[1] :]
        for row in comp.tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            texts.append(tok.decode(row[:n], skip_special_tokens=True))
            lengths.append(n)
            truncated.append(eos not in row)
    return texts, lengths, truncated


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", default="arithmetic", choices=TASKS.names())
    ap.add_argument("--difficulty", type=int, default=None, help="for tasks that take one")
    ap.add_argument("--styles", default=",".join(STYLES), help="comma-separated prompt styles")
    ap.add_argument("--n", type=int, default=64, help="test examples")
    ap.add_argument("--samples", type=int, default=8, help="completions per prompt when sampling")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=2, help="print this many sample completions")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model, tok = load_model()
    model.eval()
    tok.padding_side = "left"
    task = TASKS.get(args.task)
    header = "| task | difficulty | style | greedy acc | sampled acc | mixed groups | mean tokens | truncated | secs |"
    rows = []
    for style in args.styles.split(","):
        params = {"style": style}
        if args.difficulty is not None and "difficulty" in task_params(args.task):
            params["difficulty"] = args.difficulty
        exs = load_task(args.task, "test", args.n, seed=args.seed, **params)
        prompts = [
            tok.apply_chat_template(
                to_messages(e.prompt), tokenize=False, add_generation_prompt=True
            )
            for e in exs
        ]
        t0 = time.time()
        g_txt, _, _ = generate(
            model,
            tok,
            prompts,
            samples=1,
            greedy=True,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        g_acc = sum(task.check(c, e) for c, e in zip(g_txt, exs, strict=True)) / len(exs)
        s_txt, s_len, s_trunc = generate(
            model,
            tok,
            prompts,
            samples=args.samples,
            greedy=False,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            temperature=args.temperature,
        )
        k = args.samples
        scores = [[task.check(s_txt[i * k + j], e) for j in range(k)] for i, e in enumerate(exs)]
        s_acc = sum(map(sum, scores)) / (len(exs) * k)
        mixed = sum(0 < sum(g) < k for g in scores) / len(exs)
        secs = time.time() - t0
        diff = params.get("difficulty", "-")
        label = style if args.temperature == 1.0 else f"{style} (T={args.temperature:g})"
        row = (
            f"| {args.task} | {diff} | {label} | {g_acc:.1%} | {s_acc:.1%} | {mixed:.1%} | "
            f"{sum(s_len) / len(s_len):.1f} | {sum(s_trunc) / len(s_trunc):.1%} | {secs:.0f} |"
        )
        rows.append(row)
        print(row, flush=True)
        for i in range(min(args.show, len(exs))):
            print(
                f"    [{exs[i].answer}] greedy: {g_txt[i]!r}\n    sample: {s_txt[i * k]!r}",
                flush=True,
            )
    print("\n" + header + "\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
