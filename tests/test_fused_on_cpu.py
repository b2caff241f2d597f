"""The fused kernels (drpo_sim.fused) against the eager registry they compile.

Two layers. The formulas a kernel traces (the registry's own, in a namespace whose expm1, clip,
maximum and minimum torch.compile can trace) are held to the registry eagerly, for every
elementwise configuration of tests/strategies.py, both dtypes and the hypothesis tests' inputs,
extremes included: this costs no compilation. Inductor's code is then held to the registry on a
set of configurations that between them read every per-token quantity and every substituted
function, on the same inputs; compiling all of them would cost minutes of C++ compilation here,
and ``benchmarks/bench_objectives.py`` compiles and checks every objective.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drpo_sim as ds
from drpo_sim import fused
from tests.strategies import CONFIG_IDS, CONFIGS, make, policy_batches

ELEMENTWISE = [(c, i) for c, i in zip(CONFIGS, CONFIG_IDS) if make(c).elementwise]
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
WIDE = policy_batches(lo=-3.0e38, advantage=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1e6, -1e6])))
# configurations whose formulas between them read every TokenTerms quantity (ratio, shift, r - 1,
# the extended log-ratio, the binary KL, pi_old, the engine's gap, the Top-K columns) and every
# substituted function (expm1, clip, maximum and minimum with a scalar)
COMPILED = [
    ("drpo", {"delta": 0.15}),  # pi - mu through expm1: the substituted expm1
    ("dppo_kl", {}),  # the binary KL: log1mexp, expm1 of log mu
    ("drpo_kl", {"delta": 0.5}),  # the extended log-ratio and its capped inverse
    ("minirl", {"eps_low": 0.05, "eps_high": 0.05, "cap": 1.5}),  # pi_old, clip, maximum with a scalar
    ("grpo", {"correction": "tis", "cap": 1.5}),  # the engine's gap, minimum with a scalar, a correction
    ("dppo_topk_kl", {}),  # a Top-K column
]


def _tensors(batch, dtype):
    logp, lpb, adv, columns, _ = batch
    if len(logp) == 1:  # torch.compile specialises a length of 1: two copies keep one compilation
        logp, lpb, adv = (np.repeat(x, 2) for x in (logp, lpb, adv))
        columns = {k: np.repeat(v, 2) for k, v in columns.items()}
    as_t = lambda x: torch.tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    return as_t(logp), as_t(lpb), as_t(adv), {k: as_t(v) for k, v in columns.items()}


def _assert_close(obj, got: dict, lp, lpb, adv, columns, dtype):
    """Weight and surrogate within ULP_BOUND ulps of max(abs(eager), 1); region codes equal except
    where the eager weight lies within that bound of 0 or 1."""
    extra = {c: columns[c] for c in obj.required_columns}
    eps = torch.finfo(dtype).eps
    ref = {"weight": obj.weight(lp, lpb, adv, **extra), "surrogate": obj.surrogate(lp, lpb, adv, **extra)}
    for name, want in ref.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape
        same_nonfinite = (have == want) | (torch.isnan(have) & torch.isnan(want))
        err = (have - want).abs() / torch.clamp(want.abs(), min=1.0)
        ok = same_nonfinite | (err <= fused.ULP_BOUND * eps)
        assert bool(ok.all()), f"{obj} {name}: {have[~ok].tolist()} against {want[~ok].tolist()}"
    w = ref["weight"]
    code = fused.region_codes(torch, w)
    near_edge = ((w.abs() <= fused.ULP_BOUND * eps) | ((w - 1).abs() <= fused.ULP_BOUND * eps))
    assert bool(((got["region"] == code) | near_edge).all()), f"{obj}: region codes differ away from 0 and 1"


@DTYPES
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.one_of(policy_batches(), WIDE))
def test_traced_formulas_reproduce_the_registry_on_cpu(dtype, batch):
    lp, lpb, adv, columns = _tensors(batch, dtype)
    for config, _ in ELEMENTWISE:
        obj = make(config)
        cols = {c: columns[c] for c in obj.required_columns}
        out = fused.traced_outputs([obj], fused.OUTPUTS, lp, lpb, adv, cols)
        _assert_close(obj, dict(zip(fused.OUTPUTS, out)), lp, lpb, adv, columns, dtype)


def test_accurate_expm1_where_inductors_is_not_on_cpu():
    """Kahan's expm1 (the one kernels trace) within 2 ulps of the correctly rounded value from 1e-30
    to 600, and exact at 0, +-inf and NaN; exp(x) - 1 loses everything at 1e-12."""
    x64 = torch.logspace(-30, np.log10(600.0), 20001, dtype=torch.float64)
    x64 = torch.cat([x64, -x64])
    for dtype in (torch.float64, torch.float32):
        x = x64.to(dtype)
        want = torch.from_numpy(np.expm1(x.double().numpy()))
        have = fused._expm1(x).double()
        finite = torch.isfinite(want.to(dtype)) & (want.abs() > torch.finfo(dtype).tiny)
        rel = ((have - want).abs() / want.abs())[finite]
        assert float(rel.max()) <= 2 * torch.finfo(dtype).eps
        overflow = torch.isinf(want.to(dtype))
        assert torch.equal(have[overflow], want.to(dtype).double()[overflow])
    special = torch.tensor([0.0, float("inf"), -float("inf"), float("nan"), 1e-300], dtype=torch.float64)
    out = fused._expm1(special)
    assert out[:3].tolist() == [0.0, float("inf"), -1.0] and torch.isnan(out[3]) and float(out[4]) == 1e-300
    naive = torch.exp(torch.tensor(1e-12, dtype=torch.float32)) - 1.0
    assert float(naive) == 0.0  # what an expm1 computed as exp(x) - 1 gives


@pytest.fixture(scope="module")
def compiled():
    """Skip when this machine cannot compile (no C++ compiler for Inductor): the kernels then run
    the eager registry, which test_fallback_and_io covers."""
    k = fused.kernel("pg_is", outputs=("weight",))
    zeros = torch.zeros(4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        k(zeros, zeros, zeros + 1.0)
    if k.backend != "inductor":
        pytest.skip(f"torch.compile unavailable here: {k.reason}")
    return k


@pytest.mark.parametrize("config", COMPILED, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items()) or 'default'}"
                                                  for n, p in COMPILED])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(batch=st.one_of(policy_batches(), WIDE))
def test_compiled_kernels_agree_with_the_registry_on_cpu(compiled, config, batch):
    obj = make(config)
    dtypes = (torch.float64, torch.float32) if config[0] == "drpo" else (torch.float64,)
    for dtype in dtypes:
        lp, lpb, adv, columns = _tensors(batch, dtype)
        k = fused.kernel(obj)
        assert k.backend == "inductor", k.reason
        out = k(lp, lpb, adv, **{c: columns[c] for c in obj.required_columns})[obj.name]
        _assert_close(obj, out, lp, lpb, adv, columns, dtype)
        assert f"{dtype}, cpu" in k.first_call_seconds


def test_fallback_and_io_on_cpu(monkeypatch):
    rng = np.random.default_rng(0)
    lp = np.log(rng.uniform(0.01, 1.0, (3, 5)))
    lpb = np.log(rng.uniform(0.01, 1.0, (3, 5)))
    adv = rng.normal(size=(3, 1))
    # switched off: the eager registry, bit for bit, NumPy in and out in the broadcast shape
    monkeypatch.setenv("DRPO_SIM_KERNELS", "eager")
    objs = {"drpo": ds.objectives.get("drpo", delta=0.2), "gspo": ds.objectives.get("gspo"),
            "tis": ds.objectives.get("grpo", correction="tis", cap=1.5)}
    k = fused.Kernel(objs, fused.OUTPUTS)
    assert k.backend == "eager" and "DRPO_SIM_KERNELS" in k.reason
    assert "not elementwise" in k.eager["gspo"] and set(k.eager) == {"gspo"}
    lpo = np.log(rng.uniform(0.01, 1.0, (3, 5)))
    ids = np.repeat(np.arange(3)[:, None], 5, axis=1)
    out = k(lp, lpb, adv, logp_old=lpo, sample_id=ids)
    for label, obj in objs.items():
        extra = {"logp_old": lpo} if obj.needs_old else {}
        seq = {"sample_id": ids} if obj.per_sequence else {}
        w = obj.weight(lp, lpb, adv, **extra, **seq)
        assert isinstance(out[label]["weight"], np.ndarray) and out[label]["weight"].shape == (3, 5)
        np.testing.assert_array_equal(out[label]["weight"], w)
        np.testing.assert_array_equal(out[label]["surrogate"], obj.surrogate(lp, lpb, adv, **extra, **seq))
        np.testing.assert_array_equal(out[label]["region"], np.sign(w) + np.sign(w - 1) + 2)
    with pytest.raises(ds.objectives.MissingColumn, match="logp_old"):
        k(lp, lpb, adv)
    with pytest.raises(ValueError, match="empty input"):
        k(lp[:0], lpb[:0], adv[:0], logp_old=lpo[:0])
    with pytest.raises(ValueError, match="outputs must be"):
        fused.Kernel(objs, ("gradient",))
    # a compiler that fails at the first call: one warning, then the eager registry
    monkeypatch.setenv("DRPO_SIM_KERNELS", "fused")

    def broken(fn, label):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nsecond line")
        return fail, "inductor", ""

    monkeypatch.setattr(fused, "compile_function", broken)
    k = fused.Kernel({"drpo": objs["drpo"]}, ("weight",))
    with pytest.warns(RuntimeWarning, match="runs the eager registry: torch.compile failed on the first call: "
                                            "RuntimeError: no C\\+\\+ compiler$"):
        w = k(lp, lpb, adv)["drpo"]["weight"]
    assert k.backend == "eager" and "no C++ compiler" in k.reason
    np.testing.assert_array_equal(w, objs["drpo"].weight(lp, lpb, adv))
    # one kernel per objective, parameters and outputs
    assert fused.kernel("drpo") is fused.kernel(ds.objectives.get("drpo"))
    assert fused.kernel("drpo") is not fused.kernel(ds.objectives.get("drpo", delta=2.0))
