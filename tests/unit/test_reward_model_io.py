"""The reward model module: read-out position, save/load round trip, the reward_model reward."""

from __future__ import annotations

import json

import pytest
import torch

from lmpo.data.examples import Example
from lmpo.models.loading import tiny_model
from lmpo.models.reward_model import HEAD_FILE, META_FILE, RewardModel
from lmpo.rewards import REWARDS, ScoreBatch
from lmpo.rewards.reward_model import load_cached

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], "Say hi."]
ANSWERS = ["4", "hello there, how are you"]


def make_rm(seed: int, **meta) -> RewardModel:
    model, tok = tiny_model(seed=seed)
    rm = RewardModel.from_causal_lm(model, tok, max_length=256, seed=seed)
    rm.meta.update(meta)
    return rm


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    rm = make_rm(0)
    batched = rm.score(PROMPTS, ANSWERS)
    alone = torch.cat([rm.score(PROMPTS[i : i + 1], ANSWERS[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    ids, mask = rm.encode(PROMPTS, ANSWERS)
    right = torch.zeros_like(ids).fill_(rm.tokenizer.pad_token_id)
    rmask = torch.zeros_like(mask)
    for i in range(2):  # the same rows right-padded read out the same rewards
        n = int(mask[i].sum())
        right[i, :n], rmask[i, :n] = ids[i, -n:], 1
    with torch.no_grad():
        torch.testing.assert_close(rm(right, rmask), batched, rtol=1e-5, atol=1e-5)
    assert int(ids[0, -1]) == rm.tokenizer.eos_token_id


def test_save_load_round_trip_is_exact(tmp_path):
    rm = make_rm(3, reward_mean=0.5, reward_std=2.0)
    rm.save(tmp_path / "rm")
    assert {HEAD_FILE, META_FILE, "config.json", "model.safetensors"} <= {
        p.name for p in (tmp_path / "rm").iterdir()
    }
    assert not list(tmp_path.glob(".tmp-*")) and not list((tmp_path / "rm").glob("*.bin"))
    back = RewardModel.load(tmp_path / "rm")
    a, b = rm.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.max_length == 256 and back.meta["reward_std"] == 2.0
    torch.testing.assert_close(
        back.score(PROMPTS, ANSWERS), rm.score(PROMPTS, ANSWERS), rtol=0, atol=0
    )
    torch.testing.assert_close(
        back.score(PROMPTS, ANSWERS, normalize=True), (rm.score(PROMPTS, ANSWERS) - 0.5) / 2
    )
    rm.save(tmp_path / "rm")  # overwriting an existing directory works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        RewardModel.load(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=str(tmp_path)):
        RewardModel.load(tmp_path)


@pytest.fixture(scope="module")
def two_rms(tmp_path_factory):
    d = tmp_path_factory.mktemp("rms")
    return [
        str(make_rm(s, reward_mean=0.1 * s, reward_std=1.0 + s).save(d / f"rm{s}")) for s in (0, 1)
    ]


def test_reward_model_reward_aggregates_standardised_members(two_rms):
    exs = [Example(id=str(i), prompt=p, answer="4") for i, p in enumerate(PROMPTS)]
    batch = ScoreBatch(ANSWERS, exs, [1, 5], [False, False], 8)
    members = torch.stack([load_cached(p).score(PROMPTS, ANSWERS, normalize=True) for p in two_rms])
    fn = REWARDS.get("reward_model")
    assert fn(batch, paths=two_rms, ensemble="worst_case") == pytest.approx(
        members.min(0).values.tolist()
    )
    uwo = fn(batch, paths=two_rms, ensemble="uncertainty_weighted", ensemble_params={"lam": 0.5})
    expected = members.mean(0) - 0.5 * members.var(0, correction=1)
    assert uwo == pytest.approx(expected.tolist())
    raw = fn(batch, paths=two_rms[:1], normalize=False)
    assert raw == pytest.approx(load_cached(two_rms[0]).score(PROMPTS, ANSWERS).tolist())
    assert load_cached(two_rms[0]) is load_cached(two_rms[0])  # loaded once


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"paths": None}, "paths must be a list"),
        ({"paths": "x"}, "paths must be a list"),
        ({"paths": ["/no/such/dir"]}, "not a reward model directory"),
        ({"ensemble": "median"}, "valid names"),
        ({"ensemble": "mean", "ensemble_params": {"lam": 1}}, "does not accept"),
        ({"ensemble": "uncertainty_weighted", "one": True}, "K >= 2"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_reward_model_params_fail_in_validation(two_rms, params, needle):
    params = dict(params)
    if params.pop("one", False):
        params["paths"] = two_rms[:1]
    params.setdefault("paths", two_rms)
    if params["paths"] is None:
        del params["paths"]
    with pytest.raises(ValueError, match=needle):
        REWARDS.check_params("reward_model", params)
