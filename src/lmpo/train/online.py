"""The online loop: sample a group per prompt, score, compute advantages, update.

`train_online` is the whole run; `rl_step` is one step and reads on one screen. Methods
plug in by name through config (advantage estimator, policy loss, KL estimator,
rewards); nothing here special-cases a method.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmpo.config import RunConfig, dump_config
from lmpo.core import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES
from lmpo.core.kl import AdaptiveKLController, FixedKLController
from lmpo.core.policy_losses import aggregate
from lmpo.core.types import AdvantageInputs, PolicyLossInputs
from lmpo.data.examples import Example
from lmpo.data.prompts import render_prompt
from lmpo.data.sources import TrainData, load_data
from lmpo.models.logprobs import sequence_logprobs, shared_prefix_logprobs, supports_shared_prefix
from lmpo.models.policy import (
    Reference,
    apply_lora,
    count_trainable,
    enable_checkpointing,
    load_base,
    save_final,
)
from lmpo.rewards.rewardset import RewardSet
from lmpo.rollout.sampler import Rollout, SamplingConfig, generate
from lmpo.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmpo.train.evaluate import evaluate
from lmpo.train.logging import MetricsLog, StepProgress, plot_metrics
from lmpo.train.optim import build_optimizer


@dataclass
class RolloutBatch:
    """One step's experience: B = prompts_per_step x G completions."""

    examples: list[Example]
    rollout: Rollout
    group_ids: Tensor  # [B]
    rewards: Tensor | None = None  # [B]
    per_reward: dict[str, Tensor] | None = None
    correct: Tensor | None = None  # [B]
    ref_logp: Tensor | None = None  # [B, T]
    advantages: Tensor | None = None  # [B, T]


# ---------------------------------------------------------------------------------- one step


def rl_step(step: int, ctx: Context) -> dict[str, float]:
    cfg, t = ctx.cfg, {}
    examples = ctx.data.prompts_for_step(step, cfg.batch.prompts_per_step)
    t["generate"] = time.perf_counter()
    batch = sample_group(ctx, examples)
    t["score"] = time.perf_counter()
    score(ctx, batch)
    t["reference"] = time.perf_counter()
    if ctx.reference is not None:
        batch.ref_logp = response_logprobs(ctx, batch, reference=True)
    t["train"] = time.perf_counter()
    adv_metrics = compute_advantages(ctx, batch)
    train_metrics = update(ctx, batch)
    ctx.scheduler.step()
    t["end"] = time.perf_counter()
    ctx.kl_ctl.update(train_metrics.get("kl", 0.0), cfg.batch.rollout_size)
    return step_metrics(ctx, batch, adv_metrics, train_metrics, t)


# ---------------------------------------------------------------------------------- pieces


def sample_group(ctx: Context, examples: list[Example]) -> RolloutBatch:
    G = ctx.cfg.batch.completions_per_prompt
    prompts = [render_prompt(ctx.tokenizer, e, ctx.cfg.task.system_prompt) for e in examples]
    rollout = generate(
        ctx.model, ctx.tokenizer, prompts, ctx.sampling, generator=ctx.generator, repeats=G
    )
    group_ids = torch.arange(len(examples)).repeat_interleave(G)
    return RolloutBatch([e for e in examples for _ in range(G)], rollout, group_ids)


def score(ctx: Context, batch: RolloutBatch) -> None:
    r = batch.rollout
    batch.rewards, batch.per_reward, batch.correct = ctx.rewards.score(
        r.texts,
        batch.examples,
        r.lengths.tolist(),
        r.truncated.tolist(),
        ctx.cfg.sampling.max_new_tokens,
    )


def compute_advantages(ctx: Context, batch: RolloutBatch) -> dict[str, float]:
    spec = ctx.cfg.algorithm.advantage
    out = ADVANTAGES.get(spec.name)(
        AdvantageInputs(
            rewards=batch.rewards,
            mask=batch.rollout.response_mask.float(),
            group_ids=batch.group_ids,
        ),
        **spec.params,
    )
    batch.advantages = out.advantages.detach()
    return {f"adv/{k}": v for k, v in out.metrics.items()}


def _trim(ids: Tensor, attn: Tensor, P: int) -> tuple[Tensor, Tensor, int]:
    """Drop columns that are padding in every row (left of prompts, right of responses)."""
    first = int((attn[:, :P].sum(0) > 0).long().argmax()) if P else 0
    last = P + int(attn[:, P:].sum(-1).max())
    return ids[:, first:last], attn[:, first:last], P - first


def micro_logprobs(
    ctx: Context, model, batch: RolloutBatch, idx: Tensor, with_entropy: bool = False
):
    """Log-probs [n, T] (T = longest answer among rows idx) of those rows' answers.

    With `shared_prefix`, each group's prompt is encoded once for all its answers in this
    micro-batch (equal to the plain forward; tests/unit/test_logprobs.py).
    """
    r, kw = (
        batch.rollout,
        {
            "temperature": ctx.cfg.sampling.temperature,
            "chunk_size": ctx.cfg.logprob_chunk,
            "with_entropy": with_entropy,
        },
    )
    T = int(r.response_mask[idx].sum(-1).max())
    if ctx.shared_prefix:
        logp, ent = shared_prefix_logprobs(
            model,
            r.prompt_ids[idx],
            r.prompt_mask[idx],
            r.response_ids[idx, :T],
            r.response_mask[idx, :T],
            batch.group_ids[idx],
            **kw,
        )
    else:
        ids, attn = r.input_ids()
        i, a, p = _trim(ids[idx], attn[idx], r.prompt_ids.shape[1])
        logp, ent = sequence_logprobs(model, i, a, p, **kw)
    return logp, ent, T


def response_logprobs(ctx: Context, batch: RolloutBatch, *, reference: bool = False) -> Tensor:
    """Detached log-probs of the responses, micro-batched (reference or current policy)."""
    B, T = batch.rollout.response_ids.shape
    out = torch.zeros(B, T)
    source = ctx.reference.use() if reference else contextlib.nullcontext(ctx.model)
    with torch.no_grad(), source as model:
        for idx in torch.arange(B).split(ctx.cfg.batch.micro_batch_size):
            lp, _, t = micro_logprobs(ctx, model, batch, idx)
            out[idx, :t] = lp
    return out


def update(ctx: Context, batch: RolloutBatch) -> dict[str, float]:
    """Inner epochs x minibatches of optimizer steps, each accumulated over micro-batches."""
    cfg = ctx.cfg
    mask = batch.rollout.response_mask.float()
    old_logp = batch.rollout.logprobs  # the behaviour policy's own log-probs, from sampling
    B, G = mask.shape[0], cfg.batch.completions_per_prompt
    mb = cfg.batch.minibatch_size or B
    loss_fn = POLICY_LOSSES.get(cfg.algorithm.policy_loss.name)
    params = cfg.algorithm.policy_loss.params
    agg_kw = {
        "agg": params.get(
            "agg", POLICY_LOSSES.params(cfg.algorithm.policy_loss.name).get("agg", "token-mean")
        ),
        "l_const": params.get("l_const"),
    }
    if agg_kw["agg"] == "constant" and agg_kw["l_const"] is None:
        agg_kw["l_const"] = cfg.sampling.max_new_tokens
        params = {**params, "l_const": agg_kw["l_const"]}
    beta = ctx.kl_ctl.value if ctx.reference is not None else 0.0
    kl_fn = KL_ESTIMATORS.get(cfg.algorithm.kl.estimator)
    sums: dict[str, float] = defaultdict(float)
    grad_norms = []
    for epoch in range(cfg.batch.inner_epochs):
        # shuffle whole groups (keeps a group's answers together, so its prompt is encoded once)
        order = (
            (
                torch.randperm(B // G, generator=ctx.generator)[:, None] * G + torch.arange(G)
            ).flatten()
            if B > mb
            else torch.arange(B)
        )
        for idx_mb in order.split(mb):
            n_tok, n_seq = float(mask[idx_mb].sum()), float(len(idx_mb))
            ctx.optimizer.zero_grad(set_to_none=True)
            for idx in idx_mb.split(cfg.batch.micro_batch_size):
                logp, ent, T = micro_logprobs(ctx, ctx.model, batch, idx, with_entropy=epoch == 0)
                m = mask[idx, :T]
                inp = PolicyLossInputs(
                    logp,
                    old_logp[idx, :T],
                    batch.advantages[idx, :T],
                    m,
                    num_tokens=n_tok,
                    num_seqs=n_seq,
                )
                loss, lm = loss_fn(inp, **params)
                w = float(m.sum()) / max(
                    n_tok, 1.0
                )  # this micro-batch's share of the minibatch tokens
                if batch.ref_logp is not None:
                    kl = kl_fn(logp, batch.ref_logp[idx, :T])
                    kl_loss = aggregate(
                        kl,
                        m,
                        agg_kw["agg"],
                        num_tokens=n_tok,
                        num_seqs=n_seq,
                        l_const=agg_kw["l_const"],
                    )
                    loss = loss + beta * kl_loss
                    sums["kl"] += float((kl.detach() * m).sum()) / max(n_tok, 1.0)
                loss.backward()
                sums["loss"] += float(loss.detach())
                for k, v in lm.items():
                    sums[k] += v * w
                if ent is not None:
                    sums["entropy"] += float((ent * m).sum()) / max(n_tok, 1.0)
            trainable = [q for q in ctx.model.parameters() if q.requires_grad]
            gn = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip or float("inf"))
            grad_norms.append(float(gn))
            ctx.optimizer.step()
    n_updates = cfg.batch.inner_epochs * math.ceil(B / mb)
    out = {k: v / n_updates for k, v in sums.items() if k != "entropy"}
    if "entropy" in sums:
        out["entropy"] = sums["entropy"] / math.ceil(B / mb)
    out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["optimizer_steps"] = float(n_updates)
    return out


def step_metrics(ctx, batch: RolloutBatch, adv_m: dict, train_m: dict, t: dict) -> dict[str, float]:
    r = batch.rollout
    G = ctx.cfg.batch.completions_per_prompt
    grouped = batch.rewards.view(-1, G)
    lengths = r.lengths.float()
    gen_s, score_s = t["score"] - t["generate"], t["reference"] - t["score"]
    ref_s, train_s = t["train"] - t["reference"], t["end"] - t["train"]
    n_gen = float(lengths.sum())
    n_all = float(r.prompt_mask.sum() + lengths.sum())
    m = {
        "reward": float(batch.rewards.mean()),
        "reward_std": float(batch.rewards.std()) if len(batch.rewards) > 1 else 0.0,
        "accuracy": float(batch.correct.float().mean()),
        "zero_std_groups": float((grouped.std(-1) == 0).float().mean()) if G > 1 else 1.0,
        "completion_len/mean": float(lengths.mean()),
        "completion_len/max": float(lengths.max()),
        "truncated_frac": float(r.truncated.float().mean()),
        "lr": ctx.scheduler.get_last_lr()[0],
        "kl_coef": ctx.kl_ctl.value if ctx.reference is not None else 0.0,
        "time/generate": gen_s,
        "time/score": score_s,
        "time/reference": ref_s,
        "time/train": train_s,
        "time/step": t["end"] - t["generate"],
        "tokens_per_s/generate": n_gen / max(gen_s, 1e-9),
        "tokens_per_s/train": n_all * ctx.cfg.batch.inner_epochs / max(train_s, 1e-9),
    }
    m.update({f"rewards/{k}": float(v.mean()) for k, v in batch.per_reward.items()})
    m.update(adv_m)
    m.update(train_m)
    return m


# ---------------------------------------------------------------------------------- the run


@dataclass
class Context:
    cfg: RunConfig
    model: object
    tokenizer: object
    reference: Reference | None
    data: TrainData
    rewards: RewardSet
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    kl_ctl: object
    sampling: SamplingConfig
    shared_prefix: bool = False


class RunDirError(RuntimeError):
    pass


def build_context(cfg: RunConfig) -> Context:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)  # data errors surface before the model loads
    rewards = RewardSet(cfg.rewards)
    model, tok = load_base(cfg.model, tiny=cfg.tiny_model, seed=cfg.seed)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    model.train()
    reference = Reference(model, lora=cfg.lora.enabled) if cfg.algorithm.kl.beta > 0 else None
    if cfg.gradient_checkpointing:  # after the reference copy, which never runs backward
        enable_checkpointing(model)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.steps)
    kl = cfg.algorithm.kl
    kl_ctl = (
        AdaptiveKLController(kl.beta, kl.adaptive_target, kl.adaptive_horizon)
        if kl.adaptive_target
        else FixedKLController(kl.beta)
    )
    s = cfg.sampling
    sampling = SamplingConfig(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        stop=tuple(s.stop),
    )
    return Context(
        cfg,
        model,
        tok,
        reference,
        data,
        rewards,
        optimizer,
        scheduler,
        torch.Generator().manual_seed(cfg.seed),
        kl_ctl,
        sampling,
        shared_prefix=cfg.shared_prefix and supports_shared_prefix(model),
    )


def run_eval(ctx: Context, step: int, log: MetricsLog, bar: StepProgress) -> dict[str, float]:
    cfg = ctx.cfg
    res = evaluate(
        ctx.model,
        ctx.tokenizer,
        ctx.data.test[: cfg.eval.size or len(ctx.data.test)],
        max_new_tokens=cfg.sampling.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        system_prompt=cfg.task.system_prompt,
    )
    m = res.metrics()
    log.log(step, m)
    out = (
        Path(cfg.output_dir) / "eval" / f"step-{step:06d}.jsonl"
    )  # every completion, for inspection
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(s) + "\n" for s in res.samples))
    bar.print(
        f"step {step}: held-out accuracy {res.accuracy:.3f} (n={res.n}, mean length {res.mean_length:.1f})"
    )
    return m


def train_online(cfg: RunConfig, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Run (or resume) an online RL run; returns a summary dict (also written to summary.json)."""
    run_dir = Path(cfg.output_dir)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if not resume and list_checkpoints(run_dir):
        raise RunDirError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another output_dir"
        )
    t_start = time.time()
    ctx = build_context(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    start, first_eval = 0, None
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            model=ctx.model,
            optimizer=ctx.optimizer,
            scheduler=ctx.scheduler,
            generator=ctx.generator,
        )
        start = state["step"]
        ctx.kl_ctl.load_state_dict(state["kl_ctl"])
        first_eval = state.get("first_eval")
    log = MetricsLog(run_dir, resume_step=start if ckpt is not None else None)
    n_train, n_total = count_trainable(ctx.model)
    with StepProgress(cfg.steps, start=start, enabled=show_progress) as bar:
        bar.print(
            f"lmpo: {n_train / 1e6:.2f}M of {n_total / 1e6:.1f}M parameters train; run dir {run_dir}"
        )
        if start == 0 and cfg.eval.at_start:
            first_eval = run_eval(ctx, 0, log, bar)
        last = {}
        for step in range(start + 1, cfg.steps + 1):
            last = rl_step(step, ctx)
            log.log(step, last)
            bar.advance(
                f"reward {last['reward']:.3f} acc {last['accuracy']:.3f} {last['time/step']:.1f}s/step"
            )
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.steps:
                run_eval(ctx, step, log, bar)
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_checkpoint(
                    run_dir,
                    step,
                    model=ctx.model,
                    optimizer=ctx.optimizer,
                    scheduler=ctx.scheduler,
                    generator=ctx.generator,
                    keep=cfg.keep_checkpoints,
                    state={"kl_ctl": ctx.kl_ctl.state_dict(), "first_eval": first_eval},
                )
        final_eval = run_eval(ctx, cfg.steps, log, bar)
    log.close()
    save_final(ctx.model, ctx.tokenizer, run_dir / "final")
    plots = plot_metrics(
        run_dir / "metrics.jsonl",
        run_dir,
        {
            "held-out accuracy": ["eval/accuracy"],
            "reward": ["reward", "accuracy"] + [f"rewards/{n}" for n in ctx.rewards.names],
            "completion length": ["completion_len/mean"],
            "policy": ["entropy", "clip_frac", "kl"],
        },
    )
    summary = {
        "steps": cfg.steps,
        "accuracy_before": (first_eval or {}).get("eval/accuracy"),
        "accuracy_after": final_eval["eval/accuracy"],
        "wall_time_s": time.time() - t_start,
        "final_model": str(run_dir / "final"),
        "plots": [str(p) for p in plots],
        "last_step": last,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
