"""Diagnostic (run from the repo root): which frozen features of the base model separate the
chosen from the rejected answers of the held-out pairs? Linear Bradley-Terry probes (logistic
regression on r(chosen) - r(rejected), L2 weight wd) on frozen hidden states, and the raw
answer log-likelihood as a score. No training of the model itself."""

import json

import torch

from lmpo.models.loading import load_model
from lmpo.models.reward_model import RewardModel

DATA = "docs/results/preference/data"
torch.set_num_threads(2)
model, tok = load_model("embedded")
model.eval()
rm = RewardModel.from_causal_lm(model, tok)  # only for its encoding (prompt + answer + EOS)


def text(x):
    return x if isinstance(x, str) else x[-1]["content"]


def features(rows):
    out = {"eos": [], "last_answer": [], "mean_answer": [], "sum_logp": [], "mean_logp": []}
    for r in rows:
        for side in ("chosen", "rejected"):
            ids, mask = rm.encode([r["prompt"]], [text(r[side])])
            n_prompt = rm.encode([r["prompt"]], [""])[0].shape[1] - 1  # prompt tokens, EOS excluded
            with torch.no_grad():
                o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            h = o.hidden_states[-1][0]
            lp = torch.log_softmax(o.logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            answer_lp = lp[n_prompt - 1 : -1]  # the answer's tokens, not the appended EOS
            out["eos"].append(h[-1])
            out["last_answer"].append(h[-2])
            out["mean_answer"].append(h[n_prompt:-1].mean(0))
            out["sum_logp"].append(answer_lp.sum())
            out["mean_logp"].append(answer_lp.mean())
    return {k: torch.stack(v).view(len(rows), 2, -1) for k, v in out.items()}


train = [json.loads(line) for line in open(f"{DATA}/pairs_train.jsonl")]
test = [json.loads(line) for line in open(f"{DATA}/pairs_test.jsonl")]
f_train, f_test = features(train), features(test)
for k in ("sum_logp", "mean_logp"):
    acc = (f_test[k][:, 0] > f_test[k][:, 1]).float().mean().item()
    print(f"{k}: held-out pair accuracy {acc:.3f}")


def probe(x_train, x_test, wd):
    """L2-regularised logistic regression on standardised feature differences."""
    sd = x_train.std(0) + 1e-6
    w = torch.zeros(x_train.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x_train / sd) @ w).mean() + wd * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return [((x / sd) @ w > 0).float().mean().item() for x in (x_train, x_test)]


for k in ("eos", "last_answer", "mean_answer"):
    x_train, x_test = f_train[k][:, 0] - f_train[k][:, 1], f_test[k][:, 0] - f_test[k][:, 1]
    for wd in (1e-3, 1e-2, 1e-1):
        acc_train, acc_test = probe(x_train, x_test, wd)
        print(f"probe {k}, wd {wd}: train {acc_train:.3f}, held-out {acc_test:.3f}")
