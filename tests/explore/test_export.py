"""The exported page (:mod:`drpo_sim.explore.export`): its index tables pick the right arrays.

The page's CustomJS picks a stored curve and plane by index; these tests hold what it picks
against a direct computation. (The page rendered in a browser: tests/e2e/test_explore_browser.py.)
"""

from __future__ import annotations

import json

import numpy as np

from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.explore.export import precompute


def _small_choices() -> tuple[ctl.Choice, ...]:
    keep = {"mu": (0.01, 0.5), "adv_size": (0.25, 1.0), "eps_low": (0.2,), "eps_high": (0.2, 0.28),
            "spo_eps": (0.2,), "delta_low": (0.15, 0.3), "delta_high": (0.15,), "kl_delta": (0.05,),
            "drpo_delta": (0.15, 0.5)}
    return tuple(c.subset(keep[c.name]) for c in ctl.GEOMETRY_CONTROLS)


def test_export_index_tables_pick_the_right_arrays_on_cpu():
    choices = _small_choices()
    by = ctl.by_name(choices)
    store, spec = precompute(choices)
    json.dumps(spec)  # the page parses it as JSON
    n_mu, n_size = spec["n_mu"], spec["n_size"]
    checked = 0
    for name in ("drpo", "mask_drpo", "ppo", "drpo_no_abs_adv", "pg_is"):
        o = spec["objectives"][name]
        idx = {c: by[c].values.index(by[c].values[-1]) for c in o["controls"]}  # the last value of each control
        p = 0
        for c, n in zip(o["controls"], o["sizes"]):
            p = p * n + idx[c]
        values = {c: by[c].values[i] for c, i in idx.items()}
        obj = ctl.build_objective(name, values)
        assert o["titles"][p].startswith(name)
        for mu_i, mu in enumerate(by["mu"].values):
            for sign_i, sign in enumerate(ctl.ADV_SIGNS):
                for size_i, size in enumerate(by["adv_size"].values):
                    cid = spec["curve_ids"][o["curve_base"] + ((p * n_mu + mu_i) * 2 + sign_i) * n_size + size_i]
                    c = data.curve(obj, mu, sign * size)
                    np.testing.assert_array_equal(store.curves[cid], c.w.astype(np.float32))
                    np.testing.assert_allclose(store.bounds_pi[cid], c.bounds.pi, rtol=1e-12)
                    pid = spec["plane_ids"][o["plane_base"] + (p * 2 + sign_i) * n_size + size_i]
                    np.testing.assert_array_equal(store.planes[pid], data.plane_codes(obj, np.array([sign * size]))[0])
                    checked += 1
    assert checked == 5 * 2 * 2 * 2
    # identical arrays are stored once: ppo and grpo at the same clip, planes that ignore abs(A)
    assert len(store.planes) < len(spec["plane_ids"]) and len(store.curves) < len(spec["curve_ids"])
