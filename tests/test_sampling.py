"""Each sampler stage against the distribution it must produce on hand-made logits."""
from __future__ import annotations

import numpy as np
import pytest

from pyggml.model.runtime.sampling import Sampler, SamplingParams, sample_batch, top_p

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))
OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def survivors(**params) -> dict[int, float]:
    ids, probs = Sampler(SamplingParams(**params)).candidates(LOGITS)
    return dict(zip(ids.tolist(), probs.tolist()))


def test_greedy_picks_the_argmax():
    assert Sampler(SamplingParams(temperature=0)).sample(LOGITS) == 0


def test_temperature_one_keeps_the_model_distribution():
    np.testing.assert_allclose([survivors(temperature=1.0, **OFF)[i] for i in range(5)], np.exp(LOGITS), rtol=1e-5)


def test_temperature_sharpens_as_power_of_probabilities():
    want = np.exp(LOGITS) ** 2 / (np.exp(LOGITS) ** 2).sum()
    np.testing.assert_allclose([survivors(temperature=0.5, **OFF)[i] for i in range(5)], want, rtol=1e-5)


def test_logit_bias_multiplies_probabilities_by_exp_bias_and_bans_at_minus_100():
    got = survivors(temperature=1.0, logit_bias={1: np.log(2.0), 4: -100.0}, **OFF)
    want = np.exp(LOGITS) * [1, 2, 1, 1, np.exp(-100)]
    np.testing.assert_allclose([got[i] for i in range(5)], want / want.sum(), rtol=1e-5, atol=1e-30)
    assert Sampler(SamplingParams(temperature=0, logit_bias={0: -100.0})).sample(LOGITS) == 1


def test_top_k_keeps_k_largest_renormalised():
    got = survivors(temperature=1.0, **{**OFF, "top_k": 2})
    assert set(got) == {0, 1}
    np.testing.assert_allclose([got[0], got[1]], [0.5 / 0.7, 0.2 / 0.7], rtol=1e-5)


def test_top_p_keeps_smallest_prefix_reaching_p():
    assert set(survivors(temperature=1.0, **{**OFF, "top_p": 0.8})) == {0, 1, 2}  # 0.5+0.2 < 0.8 <= 0.85
    assert set(survivors(temperature=1.0, **{**OFF, "top_p": 0.5})) == {0}


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_on_a_large_vocabulary_keeps_the_prefix_a_full_sort_gives(p):
    """top_p looks at growing partitions instead of sorting everything: the kept set is the full sort's."""
    logits = np.random.default_rng(5).standard_normal(5000).astype(np.float32) * 2
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
    ids, kept = top_p(np.arange(5000), logits, p)
    assert ids.tolist() == order[:n].tolist() and np.array_equal(kept, logits[ids])


def test_min_p_keeps_tokens_above_fraction_of_best():
    assert set(survivors(temperature=1.0, **{**OFF, "min_p": 0.29})) == {0, 1, 2}  # p >= 0.145
    assert set(survivors(temperature=1.0, **{**OFF, "min_p": 0.31})) == {0, 1}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -1.0, 1.0], np.float32)
    ids, probs = Sampler(SamplingParams(temperature=1.0, repeat_penalty=2.0, **OFF)).candidates(logits, [0, 1])
    want = np.exp([1.0, -2.0, 1.0]) / np.exp([1.0, -2.0, 1.0]).sum()
    np.testing.assert_allclose(dict(zip(ids.tolist(), probs.tolist()))[1], want[1], rtol=1e-6)
    np.testing.assert_allclose(dict(zip(ids.tolist(), probs.tolist()))[0], want[0], rtol=1e-6)


def test_draws_follow_the_distribution_and_seed_reproduces():
    draws = [Sampler(SamplingParams(temperature=1.0, seed=3, **OFF)).sample(LOGITS) for _ in range(2)]
    assert draws[0] == draws[1]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=11, **OFF))
    counts = np.bincount([sampler.sample(LOGITS) for _ in range(20000)], minlength=5) / 20000
    np.testing.assert_allclose(counts, np.exp(LOGITS), atol=0.015)


def reference_draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """The inverse-CDF draw written out: softmax of logits / temperature in float64, one uniform per draw."""
    scaled = (logits / np.float32(temperature)).astype(np.float64)
    probs = np.exp(scaled - scaled.max())
    cum = np.cumsum(probs / probs.sum())
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def test_a_batch_draws_what_each_row_draws_alone_with_its_seed():
    """sample_batch over rows of mixed settings: a whole-vocabulary row gives the reference formula's token, seed
    for seed and step after step; a greedy or top-k row gives what its sampler alone gives."""
    rng = np.random.default_rng(0)
    settings = [dict(temperature=0.8, **OFF), dict(temperature=1.3, logit_bias={3: -100.0}, **OFF),
                dict(temperature=0), dict(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0), dict(temperature=1.0, **OFF)]
    samplers = [Sampler(SamplingParams(seed=10 + i, **kw)) for i, kw in enumerate(settings)]
    alone = [Sampler(SamplingParams(seed=10 + i, **kw)) for i, kw in enumerate(settings)]
    refs = {i: np.random.default_rng(10 + i) for i in (0, 1, 4)}
    for _ in range(40):
        logits = (rng.standard_normal((len(settings), 300)) * 2).astype(np.float32)
        got = sample_batch(samplers, logits, [()] * len(settings))
        want = [s.sample(row) for s, row in zip(alone, logits)]
        biased = logits[1].copy()
        biased[3] -= 100.0
        for i, row in ((0, logits[0]), (1, biased), (4, logits[4])):
            assert got[i] == reference_draw(row, settings[i]["temperature"], refs[i])
        assert got == want
