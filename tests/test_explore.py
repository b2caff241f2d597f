"""The trust-region explorer without a browser: its numbers, its controls, its live run, its CLI.

The ``_on_cpu`` tests hold every number the explorer shows against the registry
(:mod:`drpo_sim.objectives`) and the simulator: the boundaries it finds by bisection against the
objects' own parameters, the region images against ``Objective.regions``, the live run against
``drpo_sim.sim.run`` on the same seeds, and the exported page's index tables against a direct
computation.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from drpo_sim import objectives, sim
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.explore.live import LiveRun, seed_mean

MUS = (1e-3, 0.01, 0.1, 0.5, 0.9)


# --------------------------------------------------------------------------------------------
# data: curves, boundaries, regions
# --------------------------------------------------------------------------------------------


def test_curve_is_the_registry_weight_on_cpu():
    for name in objectives.available():
        obj = objectives.get(name)
        for mu in MUS:
            for adv in (1.0, -0.25):
                c = data.curve(obj, mu, adv)
                assert mu in c.pi and np.all(np.diff(c.pi) > 0)
                np.testing.assert_array_equal(c.w, obj.weight(np.log(c.pi), np.log(mu), adv))


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        # REFERENCE.md: the clip is active at r = 1 + eps_high (A > 0) and r = 1 - eps_low (A < 0)
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, lambda mu, s: mu * (1.28 if s > 0 else 0.8)),
        ("cispo", {"eps_high": 0.28}, lambda mu, s: mu * 1.28),
        # the TV mask at pi - mu = delta_high (A > 0) and -delta_low (A < 0)
        ("dppo_tv", {"delta_low": 0.1, "delta_high": 0.3}, lambda mu, s: mu + (0.3 if s > 0 else -0.1)),
        # the zeros of the weight: DRPO pi* = mu + sign(A) delta, SPO r* = 1 + sign(A) eps
        ("drpo", {"delta": 0.15}, lambda mu, s: mu + s * 0.15),
        ("spo", {"eps": 0.2}, lambda mu, s: mu * (1 + s * 0.2)),
    ],
)
def test_boundaries_sit_where_the_parameters_put_them_on_cpu(name, params, expected):
    obj = objectives.get(name, **params)
    for mu in MUS:
        for sign in (1.0, -1.0):
            c = data.curve(obj, mu, sign)
            want = expected(mu, sign)
            if not data.PI_MIN < want < 1 - data.PI_MIN:
                assert len(c.bounds.pi) == 0, (name, mu, sign, c.bounds.pi)
                continue
            assert len(c.bounds.pi) == 1, (name, mu, sign, c.bounds.pi)
            np.testing.assert_allclose(c.bounds.pi[0], want, rtol=1e-9)
            # the regions on either side are the ones the boundary reports
            eps = 1e-7 * min(want, 1 - want)
            near, far = (want - eps, want + eps) if want > mu else (want + eps, want - eps)
            codes = data.region_codes(obj.weight(np.log([near, far]), np.log(mu), sign))
            assert (codes[0], codes[1]) == (c.bounds.inner[0], c.bounds.outer[0])


def test_boundaries_are_vectorised_over_cases_on_cpu():
    obj = objectives.get("drpo", delta=0.2)
    mu = np.array([0.01, 0.3, 0.6])
    adv = np.array([1.0, -1.0, 1.0])
    pi = np.stack([data.pi_axis(m)[:400] for m in mu])
    b = data.boundaries(obj, pi, mu, adv)
    for i in range(3):
        single = data.boundaries(obj, pi[i : i + 1], mu[i : i + 1], adv[i : i + 1])
        np.testing.assert_array_equal(b.of(i).pi, single.pi)


def test_region_codes_follow_objective_regions_on_cpu():
    w = np.array([1.0, 0.0, 0.5, -0.3, 1.7, np.nextafter(1.0, 2.0)])
    np.testing.assert_array_equal(data.region_codes(w), [0, 1, 2, 3, 4, 4])
    assert data.REGION_NAMES[1:] == objectives.Regions.NAMES


def test_plane_is_the_regions_of_the_registry_weight_on_cpu():
    axis = data.plane_axis(40)
    for name, params in (("ppo", {}), ("dppo_tv", {}), ("drpo", {"delta": 0.15}), ("spo", {"eps": 0.2})):
        obj = objectives.get(name, **params)
        codes = data.plane_codes(obj, np.array([1.0, -1.0]), n=40)
        assert codes.shape == (2, 40, 40) and codes.dtype == np.uint8
        for k, sign in enumerate((1.0, -1.0)):
            for i, j in ((0, 39), (39, 0), (20, 5), (7, 33)):  # rows: pi, columns: mu
                reg = obj.regions(np.log(axis[i]), np.log(axis[j]), sign)
                flags = [bool(getattr(reg, n)) for n in objectives.Regions.NAMES]
                assert codes[k, i, j] == (flags.index(True) + 1 if any(flags) else 0)
    start, width = data.plane_extent()
    assert np.isclose(start, data.to_logit(data.PI_MIN)) and np.isclose(start + width, data.to_logit(1 - data.PI_MIN))


# --------------------------------------------------------------------------------------------
# controls
# --------------------------------------------------------------------------------------------


def test_every_control_maps_onto_a_real_parameter():
    names = {c.name for c in ctl.GEOMETRY_CONTROLS}
    for obj_name, mapping in ctl.PARAM_CONTROLS.items():
        assert obj_name in objectives.available()
        fields = set(objectives.get(obj_name).params)
        assert set(mapping) <= fields, obj_name
        assert set(mapping.values()) <= names, obj_name
    values = ctl.default_values()
    for name in objectives.available():
        obj = ctl.build_objective(name, values)
        for param, control in ctl.PARAM_CONTROLS.get(name, {}).items():
            assert obj.params[param] == values[control]
    assert ctl.build_objective("drpo", {**values, "drpo_delta": 2.5}) == objectives.get("drpo", delta=2.5)


def test_export_values_are_a_subset_with_the_defaults():
    full = ctl.by_name(ctl.GEOMETRY_CONTROLS)
    for c in ctl.export_controls():
        assert set(c.values) <= set(full[c.name].values) and c.default == full[c.name].default
    with pytest.raises(ValueError, match="unknown objective.*available: pg_is"):
        ctl.check_objectives(["drpo", "nope"])


# --------------------------------------------------------------------------------------------
# views (Python side: what the server sends)
# --------------------------------------------------------------------------------------------


def test_geometry_views_show_the_selected_objectives_at_the_chosen_controls_on_cpu():
    from drpo_sim.explore.views import build_geometry

    g = build_geometry(ctl.GEOMETRY_CONTROLS, ["drpo", "ppo"])
    choices = ctl.by_name(ctl.GEOMETRY_CONTROLS)
    g.sliders["drpo_delta"].value = choices["drpo_delta"].values.index(0.5)
    g.sliders["mu"].value = choices["mu"].values.index(0.3)
    g.adv_sign.active = 1
    g.fill()
    src = g.curves["drpo"].data
    pi = np.asarray(src["pi"])
    np.testing.assert_array_equal(src["w"], objectives.get("drpo", delta=0.5).weight(np.log(pi), np.log(0.3), -1.0))
    np.testing.assert_allclose(src["x"], data.to_logit(pi))
    assert g.lines["drpo"].visible and g.lines["ppo"].visible and not g.lines["spo"].visible
    assert not g.plane_figs["spo"].visible
    assert np.isclose(g.mu_line.location, data.to_logit(0.3))
    rows = g.bounds.data
    drpo_b = [p for p, o in zip(rows["pi"], rows["objective"]) if o == "drpo"]
    assert drpo_b == []  # pi* = mu - delta = 0.3 - 0.5 < 0: DRPO's weight stays positive over the whole axis
    ppo_b = [p for p, o in zip(rows["pi"], rows["objective"]) if o == "ppo"]
    np.testing.assert_allclose(ppo_b, [0.3 * 0.8], rtol=1e-9)
    img = g.planes["drpo"].data["image"][0]
    np.testing.assert_array_equal(img, data.plane_codes(objectives.get("drpo", delta=0.5), np.array([-1.0]))[0])


# --------------------------------------------------------------------------------------------
# the exported page's index tables (what its CustomJS picks)
# --------------------------------------------------------------------------------------------


def _small_choices() -> tuple[ctl.Choice, ...]:
    keep = {"mu": (0.01, 0.5), "adv_size": (0.25, 1.0), "eps_low": (0.2,), "eps_high": (0.2, 0.28),
            "spo_eps": (0.2,), "delta_low": (0.15, 0.3), "delta_high": (0.15,), "kl_delta": (0.05,),
            "drpo_delta": (0.15, 0.5)}
    return tuple(c.subset(keep[c.name]) for c in ctl.GEOMETRY_CONTROLS)


def test_export_index_tables_pick_the_right_arrays_on_cpu():
    from drpo_sim.explore.export import precompute

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


# --------------------------------------------------------------------------------------------
# the live run
# --------------------------------------------------------------------------------------------


def test_live_run_reports_the_simulators_own_metrics_on_cpu():
    config = {"noise_std": 0.1, "precision": "bf16", "staleness": 2, "vocab_size": 64, "lr": 0.05}
    objs = {"drpo": objectives.get("drpo", delta=0.15), "grpo": objectives.get("grpo")}
    live = LiveRun(objs, config, n_seeds=3, max_steps=7)
    first = live.advance(4)
    rest = live.advance(10)  # capped at max_steps
    assert live.done and live.step == 7
    cfg = sim.SimConfig.from_flat({"env": "bandit", **config, "steps": 7})
    for name, obj in objs.items():
        steps = first[name]["step"] + rest[name]["step"]
        assert steps == [float(i) for i in range(1, 8)]
        table = sim.run(cfg, name, [0, 1, 2], params=obj.params)
        per_step = table.groupby("step")[["expected_reward", "shift_mean"]].mean()
        reward = first[name]["reward"] + rest[name]["reward"]
        np.testing.assert_allclose(reward, per_step["expected_reward"], rtol=1e-12)
        np.testing.assert_allclose(first[name]["shift"] + rest[name]["shift"], per_step["shift_mean"], rtol=1e-12)
    assert live.advance(3)["drpo"]["step"] == []
    with pytest.raises(ValueError, match="unknown field"):
        LiveRun(objs, {**config, "steps": 3})


def test_app_session_streams_the_run_and_restarts_it_when_its_settings_change():
    from bokeh.document import Document

    from drpo_sim.explore.app import MAX_STEPS_PER_TICK, STEPS_PER_TICK, Explorer

    ex = Explorer(Document(), ["drpo", "grpo"])

    def steps() -> int:
        return len(ex.live_views.sources["drpo"].data["step"])

    ex.start()
    ex.tick()
    assert steps() == STEPS_PER_TICK
    ex.tick()  # later ticks take as many steps as fit the time budget
    assert STEPS_PER_TICK < steps() == ex.run.step <= STEPS_PER_TICK + MAX_STEPS_PER_TICK
    assert "running" in ex.live_views.status.text
    assert ex.live_views.lines["drpo"][0].visible and not ex.live_views.lines["spo"][0].visible
    ex.geo.sliders["mu"].value = 0  # mu is no setting of the run: it goes on
    assert steps() == ex.run.step > 0
    ex.geo.sliders["drpo_delta"].value = 5  # DRPO's delta is: the run starts over
    assert steps() == 0 and ex.run is None
    ex.tick()
    assert steps() == STEPS_PER_TICK
    assert ex.run.objs["drpo"].delta == ctl.by_name(ctl.GEOMETRY_CONTROLS)["drpo_delta"].values[5]
    ex.live_views.precision.value = "bf16"
    assert steps() == 0 and ex.run is None
    ex.stop()
    assert ex.callback is None and "stopped" in ex.live_views.status.text


def test_seed_mean_skips_dead_seeds_without_warning():
    assert seed_mean(np.array([1.0, np.nan, 3.0])) == 2.0
    assert np.isnan(seed_mean(np.array([np.nan, np.nan])))


# --------------------------------------------------------------------------------------------
# the command line: bad input is one line and exit status 2
# --------------------------------------------------------------------------------------------


def _explore(capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``explore`` in-process (what ``python -m drpo_sim.explore.cli`` calls); exit code and stderr lines."""
    from drpo_sim.explore.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objectives", "drpo,nope", "--no-browser"], "unknown objective(s) nope"),
        (["--port", "70000", "--no-browser"], "--port must be an integer in 0..65535"),
        (["--port", "http", "--no-browser"], "--port must be an integer"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, args, message):
    code, lines = _explore(capsys, *args)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_unwritable_export_path_is_one_line_and_status_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, lines = _explore(capsys, "--export", str(blocker / "page.html"))
    assert code == 2 and len(lines) == 1 and "cannot write" in lines[0], lines
    code, lines = _explore(capsys, "--export", str(tmp_path))
    assert code == 2 and len(lines) == 1 and "is a directory" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing left behind


def test_port_in_use_is_one_line_and_status_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, lines = _explore(capsys, "--port", str(port), "--no-browser")
    assert code == 2 and len(lines) == 1 and "error" in lines[0], lines


def test_add_parser_plugs_into_a_drpo_sim_style_parser():
    import argparse

    from drpo_sim.explore.cli import add_parser

    parser = argparse.ArgumentParser(prog="drpo-sim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["explore", "--port", "0", "--no-browser", "--export", "x.html"])
    assert args.command == "explore" and args.no_browser and args.export == "x.html" and callable(args.func)
    assert Path(sys.modules["drpo_sim.explore.cli"].__file__).name == "cli.py"
