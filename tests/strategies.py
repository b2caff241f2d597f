"""Hypothesis strategies for token batches, and the objective configurations under test."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import drpo_sim as ds

# Every registered objective, at its defaults and at settings where its trust region is active
# on the inputs below (small thresholds), so no branch of any weight goes untested.
CONFIGS: list[tuple[str, dict]] = [
    ("pg_is", {}),
    ("ppo", {}),
    ("ppo", {"eps_low": 0.1, "eps_high": 0.3, "dual_clip": 3.0}),
    ("grpo", {}),
    ("cispo", {}),
    ("cispo", {"cap": 10.0}),
    ("spo", {}),
    ("spo", {"eps": 0.2}),
    ("dppo_tv", {}),
    ("dppo_tv", {"delta_low": 0.05, "delta_high": 0.3}),
    ("dppo_kl", {}),
    ("drpo", {}),
    ("drpo", {"delta": 0.15}),
    ("mask_drpo", {}),
    ("mask_drpo", {"delta": 0.15, "delta_low": 0.1, "delta_high": 0.1}),
    ("drpo_no_abs_adv", {}),
    ("drpo_no_abs_adv", {"delta": 0.5, "adv_scale": 2.0}),
    ("drpo_no_abs_adv", {"delta": 0.5, "adv_scale": "batch"}),
    ("drpo_kl", {}),
    ("drpo_kl", {"delta": 0.5}),
    ("drpo_tv", {}),
    ("drpo_tv", {"delta": 0.5}),
    ("drpo_k3", {}),
    ("drpo_k3", {"delta": 0.5}),
    ("ppo_rare_exempt", {}),
    ("ppo_rare_exempt", {"mu_low": 0.0, "mu_high": 0.1}),
    # three policies: anchored to pi_old (the batch's logp_old)
    ("minirl", {}),
    ("minirl", {"eps_low": 0.05, "eps_high": 0.05, "cap": 1.5}),
    ("dppo_tv_recompute", {}),
    ("dppo_tv_recompute", {"delta": 0.05}),
    ("dppo_kl_recompute", {}),
    # DPPO's Top-K modes (the batch's topk_tv / topk_kl)
    ("dppo_topk_tv", {}),
    ("dppo_topk_tv", {"delta_low": 0.05, "delta_high": 0.5}),
    ("dppo_topk_kl", {}),
    ("decoupled_ppo", {}),
    ("decoupled_ppo", {"is_cap": 1.5, "dual_clip": 3.0}),
    # sequence-level ratios (the batch's sample_id)
    ("gspo", {}),
    ("gspo", {"eps_low": 0.1, "eps_high": 0.1}),
    ("gspo_token", {}),
    ("gspo_token", {"eps_low": 0.1, "eps_high": 0.1}),
    # every correction, on objectives of each kind
    ("grpo", {"correction": "is"}),
    ("grpo", {"correction": "tis", "cap": 1.5}),
    ("drpo", {"delta": 0.15, "correction": "icepop"}),
    ("spo", {"correction": "seq_tis", "cap": 1.5}),
    ("dppo_tv", {"correction": "seq_mis", "cap": 1.5}),
    ("drpo_kl", {"correction": "geo_mis", "upper": 1.05}),
    ("gspo_token", {"eps_low": 0.1, "eps_high": 0.1, "correction": "tis"}),
]

CONFIG_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items()) or 'default'}" for n, p in CONFIGS]


def make(config: tuple[str, dict]) -> ds.objectives.Objective:
    name, params = config
    return ds.objectives.get(name, **params)


def _logp(lo: float) -> st.SearchStrategy[float]:
    """A log-probability in [lo, 0], with the edges (mu near 0, mu near 1) drawn often."""
    return st.one_of(
        st.floats(lo, 0.0),
        st.floats(-1e-6, 0.0),  # probability near 1
        st.floats(lo, lo * 0.6),  # probability near 0
        st.sampled_from([0.0, -1e-12, np.log(0.5), np.log(1e-3), lo]),
    )


ADVANTAGE = st.one_of(
    # |A| < 1e-30 maps to 0: float32 products of subnormal numbers keep only a few bits, which
    # says nothing about the objectives (the no-NaN test still draws subnormal advantages)
    st.floats(-1e3, 1e3).map(lambda a: 0.0 if abs(a) < 1e-30 else a),
    st.sampled_from([0.0, 1.0, -1.0, 1e-7, -1e-7, 1e3, -1e3]),
)


@st.composite
def token_batches(draw, lo: float = -50.0, max_size: int = 48, advantage=ADVANTAGE):
    """``(logp, logp_behavior, advantage)`` float64 NumPy arrays of one length.

    Some draws put ``pi`` exactly a small step away from ``mu`` so the near-on-policy regime,
    where every trust region starts, is not left to chance.
    """
    n = draw(st.integers(1, max_size))
    logp = np.array(draw(st.lists(_logp(lo), min_size=n, max_size=n)))
    lpb = np.array(draw(st.lists(_logp(lo), min_size=n, max_size=n)))
    near = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    step = np.array(draw(st.lists(st.floats(-0.5, 0.5), min_size=n, max_size=n)))
    logp = np.where(near, np.minimum(lpb + step, 0.0), logp)
    adv = np.array(draw(st.lists(advantage, min_size=n, max_size=n)))
    return logp, lpb, adv


@st.composite
def policy_batches(draw, lo: float = -50.0, max_size: int = 48, advantage=ADVANTAGE):
    """``(logp, logp_behavior, advantage, columns, sample_id)``: a token batch with its extra
    per-token inputs ``columns`` (``logp_old``, the trainer's recomputed log-probs, often a small
    step from ``mu`` as an engine's gap is, sometimes anywhere; DPPO's Top-K divergences ``topk_tv``
    in [0, 1] and ``topk_kl`` >= 0, infinite at times) and the tokens split into up to four sequences."""
    logp, lpb, adv = draw(token_batches(lo=lo, max_size=max_size, advantage=advantage))
    n = len(logp)
    free = np.array(draw(st.lists(_logp(lo), min_size=n, max_size=n)))
    near = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    gap = np.array(draw(st.lists(st.floats(-0.3, 0.3), min_size=n, max_size=n)))
    logp_old = np.where(near, np.minimum(lpb + gap, 0.0), free)
    cuts = sorted(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3, unique=True))) if n > 1 else []
    sample_id = np.zeros(n, dtype=np.int64)
    for c in cuts:
        sample_id[c:] += 1
    tv = np.array(draw(st.lists(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.05, 0.15, 1.0])),
                                min_size=n, max_size=n)))
    kl = np.array(draw(st.lists(st.one_of(st.floats(0.0, 50.0), st.sampled_from([0.0, 0.05, np.inf])),
                                min_size=n, max_size=n)))
    return logp, lpb, adv, {"logp_old": logp_old, "topk_tv": tv, "topk_kl": kl}, sample_id


def per_sequence_advantage(adv: np.ndarray, sample_id: np.ndarray) -> np.ndarray:
    """Each token's advantage replaced by its sequence's first one (one advantage per sequence)."""
    _, first, inverse = np.unique(sample_id, return_index=True, return_inverse=True)
    return adv[first][inverse]
