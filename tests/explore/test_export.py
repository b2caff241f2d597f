"""The exported page (:mod:`drpo_sim.explore.export`): its index tables pick the right arrays.

The page's CustomJS picks a stored curve and plane by index; these tests hold what it picks
against a direct computation. (The page rendered in a browser, the full export's size and its gap
grid: tests/e2e/test_explore_browser.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from drpo_sim import geometry
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.explore.export import precompute

EXPORT_BYTES_MAX = 6_000_000
"""Bound on the exported page: 3.49 MB before the gap control and the corrected entries, 4.20 MB with them."""


def _small_choices() -> tuple[ctl.Choice, ...]:
    keep = {"mu": (0.01, 0.5), "adv_size": (0.25, 1.0), "gap": (0.5, 1.0, 4.0), "eps_low": (0.2,),
            "eps_high": (0.2, 0.28), "spo_eps": (0.2,), "delta_low": (0.15, 0.3), "delta_high": (0.15,),
            "kl_delta": (0.05,), "drpo_delta": (0.15, 0.5)}
    return tuple(c.subset(keep[c.name]) for c in ctl.GEOMETRY_CONTROLS)


def _last_combo(o: dict, by: dict[str, ctl.Choice]) -> tuple[int, dict]:
    """The index ``p`` of the combination where each of the objective's controls is at its last value."""
    p = 0
    for c, n in zip(o["controls"], o["sizes"]):
        p = p * n + n - 1
    return p, {c: by[c].values[-1] for c in o["controls"]}


def _ids(spec: dict, o: dict, p: int, mu_i: int, sign_i: int, size_i: int, gap_i: int) -> tuple[int, int]:
    """``(curve id, plane id)`` as the page's JS computes them (:data:`drpo_sim.explore.export.JS`)."""
    n_g, g_i = (spec["n_gap"], gap_i) if o["gap"] else (1, 0)
    cid = spec["curve_ids"][o["curve_base"] + (((p * spec["n_mu"] + mu_i) * 2 + sign_i) * spec["n_size"] + size_i)
                            * n_g + g_i]
    pid = spec["plane_ids"][o["plane_base"] + ((p * 2 + sign_i) * spec["n_size"] + size_i) * n_g + g_i]
    return cid, pid


@pytest.fixture(scope="module")
def small():
    choices = _small_choices()
    store, spec = precompute(choices)
    json.dumps(spec)  # the page parses it as JSON
    return ctl.by_name(choices), store, spec


def test_export_index_tables_pick_the_right_arrays_on_cpu(small):
    by, store, spec = small
    checked = 0
    for name in ("drpo", "mask_drpo", "ppo", "drpo_no_abs_adv", "pg_is"):
        o = spec["objectives"][name]
        assert not o["gap"]
        p, values = _last_combo(o, by)
        obj = ctl.build_objective(name, values)
        assert o["titles"][p].startswith(name)
        for mu_i, mu in enumerate(by["mu"].values):
            for sign_i, sign in enumerate(ctl.ADV_SIGNS):
                for size_i, size in enumerate(by["adv_size"].values):
                    for gap_i in range(spec["n_gap"]):  # the gap picks nothing for them
                        cid, pid = _ids(spec, o, p, mu_i, sign_i, size_i, gap_i)
                        c = data.curve(obj, mu, sign * size)
                        np.testing.assert_array_equal(store.curves[cid], c.w.astype(np.float32))
                        np.testing.assert_allclose(store.bounds_pi[cid], c.bounds.pi, rtol=1e-12)
                        want = data.plane_codes(obj, np.array([sign * size]))[0]
                        np.testing.assert_array_equal(store.planes[pid], want)
                    checked += 1
    assert checked == 5 * 2 * 2 * 2
    # identical arrays are stored once: ppo and grpo at the same clip, planes that ignore abs(A)
    assert len(store.planes) < len(spec["plane_ids"]) and len(store.curves) < len(spec["curve_ids"])


@pytest.mark.parametrize("name", ["minirl", "decoupled_ppo", "grpo+tis", "grpo+icepop"])
def test_export_picks_the_curves_at_the_gap_on_cpu(small, name):
    by, store, spec = small
    o = spec["objectives"][name]
    assert o["gap"] and spec["n_gap"] == len(by["gap"].values)
    p, values = _last_combo(o, by)
    obj = ctl.build_objective(name, values)
    assert obj.needs_old and o["titles"][p] == ("grpo(eps_low=0.2, eps_high=0.28)+" + str(obj.correction)
                                                if "+" in name else str(obj))
    for mu_i, mu in enumerate(by["mu"].values):
        for sign_i, sign in enumerate(ctl.ADV_SIGNS):
            for size_i, size in enumerate(by["adv_size"].values):
                adv = sign * size
                for gap_i, b in enumerate(by["gap"].values):
                    cid, pid = _ids(spec, o, p, mu_i, sign_i, size_i, gap_i)
                    w = store.curves[cid]
                    if b * mu >= 1.0:  # not drawn
                        assert w.size == 0 and store.bounds_pi[cid] == []
                    else:
                        pi = data.pi_axis(mu)
                        want = geometry.single_token_weight(obj, np.log(pi), np.log(mu), adv, logp_old=np.log(b * mu))
                        np.testing.assert_array_equal(w, want.astype(np.float32))
                        np.testing.assert_allclose(store.bounds_pi[cid], data.curve(obj, mu, adv, b).bounds.pi)
                    if b == 1.0:  # nothing changes at b = 1
                        np.testing.assert_array_equal(w, data.curve(obj, mu, adv).w.astype(np.float32))
                    plane = data.plane_codes(obj, np.array([adv]), gap=b)[0]
                    np.testing.assert_array_equal(store.planes[pid], plane)
                    k = mu_i * spec["n_gap"] + gap_i
                    assert (spec["old_x"][k] is None) == (b == 1.0 or b * mu >= 1.0)
                    assert f"b = {b:g}" in spec["gap_texts"][k]


