"""Fused per-token kernels: an objective's weight, surrogate and region code in one compiled pass.

The registry (:mod:`drpo_sim.objectives`) evaluates a formula one array operation at a time: each
``exp``, ``where`` or product is a pass over the tokens (cache-blocked where no gradient is
needed). A kernel here compiles **the registry's own formula**, the ``_weight`` and ``_surrogate``
of the objective on a :class:`~drpo_sim.objectives.TokenTerms`, with ``torch.compile`` (Inductor:
C++/OpenMP on the CPU, Triton on a GPU) into one loop over the tokens that reads the inputs once
and writes each output once. Nothing is written twice: the eager registry stays the reference,
and ``tests/test_fused_on_cpu.py`` holds every kernel to it.

Usage::

    from drpo_sim import fused
    k = fused.kernel(ds.objectives.get("drpo", delta=12.5))
    out = k(logp, logp_behavior, advantage)      # NumPy in, NumPy out; torch in, torch out
    out["weight"], out["surrogate"], out["region"]
    k.first_call_seconds                          # the compilation cost, per dtype and device

**Agreement with the eager path.** Inductor's ``exp`` and ``log`` are its vectorised
(SLEEF-style) versions, which differ from ATen's by at most one unit in the last place (ulp); its
``expm1`` is ``exp(x) - 1``, which loses every digit for small ``x`` (relative error 1 at
``x = 1e-12`` in float32), while the objectives read ``pi - mu = mu expm1(log r)`` precisely where
shifts are small. A kernel therefore evaluates the formula in a namespace whose ``expm1`` is
Kahan's ``(u - 1) x / log u`` with ``u = exp(x)`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 1.14.1): within 2 ulp of the correctly rounded value, measured over
8e5 arguments from 1e-30 to 600 in float32 and float64. The weight and surrogate then agree with
the eager registry to :data:`ULP_BOUND` ulps of ``max(abs(eager), 1)`` (``tests/test_fused_on_cpu.py``,
every elementwise objective, both dtypes, the hypothesis tests' extreme inputs); a region code
may differ only where the eager weight is within that bound of 0 or 1.

**Which objectives.** Only elementwise ones (:attr:`~drpo_sim.objectives.Objective.elementwise`):
a sequence ratio or a batch statistic is not one loop over tokens, and their kernels run the
eager registry (``backend == "eager"``, with the reason).

**Compilation** costs seconds on the first call of each objective, dtype and device (Inductor
caches the generated code on disk, so a later process pays less) and happens once per process
(:func:`kernel` caches kernels by objective and outputs). Inputs are flattened to one dimension,
compiled with a dynamic length, so batches of any size reuse one compilation. Where compilation
is impossible (no C++ compiler, ``torch.compile`` unsupported) or switched off
(``DRPO_SIM_KERNELS=eager``), a kernel runs the eager registry, warns once and says why
(``Kernel.backend``, ``Kernel.reason``). ``benchmarks/bench_objectives.py`` times both.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from drpo_sim import objectives as objectives_mod
from drpo_sim._xp import as_float_arrays, is_torch, namespace, stop_gradient

__all__ = ["OUTPUTS", "ULP_BOUND", "Kernel", "compile_function", "enabled", "kernel", "region_codes", "traced_outputs"]

OUTPUTS: tuple[str, ...] = ("weight", "surrogate", "region")
"""What a kernel can return: the weight ``w`` (``dJ/dlogp = A r w``), the surrogate ``J`` and the
region code of :func:`region_codes`."""

ULP_BOUND = 64
"""The agreement with the eager registry, in units of ``eps * max(abs(eager), 1)`` (float32 or
float64 ``eps``): the largest difference measured over every elementwise objective, both dtypes and
the extreme inputs of ``tests/test_fused_on_cpu.py`` is stated in docs/performance.md, below this."""

_ENV = "DRPO_SIM_KERNELS"


def enabled() -> bool:
    """Whether kernels compile (``DRPO_SIM_KERNELS`` is not ``eager``)."""
    return os.environ.get(_ENV, "fused").strip().lower() != "eager"


def region_codes(xp: Any, w: Any, w_minus_one: Any = None) -> Any:
    """Each weight's region as ``sign(w) + sign(w - 1) + 2``: 0 corrective (``w < 0``), 1 masked
    (``w == 0``), 2 attenuated, 3 exactly 1, 4 amplified (:class:`drpo_sim.objectives.Regions`,
    plus the tokens it leaves out), as floats; NaN weights give NaN, which the replay counts apart.
    ``w_minus_one`` is ``w - 1`` where the caller has it already (the replay bins it)."""
    return xp.sign(w) + xp.sign(w - 1.0 if w_minus_one is None else w_minus_one) + 2.0


# ----------------------------------------------------------------------------------------------
# the namespace a compiled formula is traced in


def _expm1(x: Any) -> Any:
    """``expm1`` by Kahan's formula, exact at ``u = exp(x) = 1`` (returns ``x``), at ``u - 1 = -1``
    and at ``u = inf``; ``x / log u`` first, so that ``(u - 1) x`` cannot overflow."""
    import torch

    u = torch.exp(x)
    um1 = u - 1.0
    ratio = torch.where(um1 == 0.0, torch.ones_like(x), x / torch.log(u))
    inner = torch.where(um1 == -1.0, um1, um1 * ratio)
    return torch.where(u == 1.0, x, torch.where(torch.isinf(u), u, inner))


class _CompiledNamespace:
    """The torch array namespace with an accurate ``expm1`` (module docstring): what a kernel's
    :class:`~drpo_sim.objectives.TokenTerms` computes with, so the registry's formulas compile
    unchanged."""

    def __init__(self, xp: Any) -> None:
        self.wraps = xp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wraps, name)

    @staticmethod
    def expm1(x: Any) -> Any:
        return _expm1(x)

    @staticmethod
    def clip(x: Any, min: Any = None, max: Any = None) -> Any:  # noqa: A002 (the array API's names)
        # array_api_compat's clip checks its bounds with Python's math.isnan, which torch.compile
        # cannot trace; on a float tensor with float bounds it is torch.clamp
        import torch

        return torch.clamp(x, min=min, max=max)

    # array_api_compat's maximum and minimum promote a Python scalar through result_type, which
    # torch.compile cannot trace either; with one tensor and one scalar they are a clamp (NaN
    # propagates in both), with two tensors torch's own
    @staticmethod
    def maximum(x1: Any, x2: Any) -> Any:
        return _extremum("maximum", "min", x1, x2)

    @staticmethod
    def minimum(x1: Any, x2: Any) -> Any:
        return _extremum("minimum", "max", x1, x2)


def _extremum(name: str, bound: str, x1: Any, x2: Any) -> Any:
    """``torch.<name>(x1, x2)``, or ``torch.clamp(tensor, <bound>=scalar)`` when one is a Python number."""
    import torch

    if isinstance(x2, (int, float)):
        return torch.clamp(x1, **{bound: x2})
    if isinstance(x1, (int, float)):
        return torch.clamp(x2, **{bound: x1})
    return getattr(torch, name)(x1, x2)


# ----------------------------------------------------------------------------------------------
# compiling a function, with the eager fallback


def compile_function(fn: Callable[..., Any], label: str) -> tuple[Callable[..., Any], str, str]:
    """``(callable, backend, reason)``: ``fn`` compiled by ``torch.compile`` (dynamic shapes), or
    ``fn`` itself with the reason when kernels are switched off. Compilation happens at the first
    call; :class:`Kernel` catches its failure there."""
    if not enabled():
        return fn, "eager", f"{_ENV}=eager"
    import torch

    return torch.compile(fn, dynamic=True, fullgraph=True), "inductor", ""


def traced_outputs(objectives: Sequence[objectives_mod.Objective], outputs: tuple[str, ...], logp: Any,
                   logp_behavior: Any, advantage: Any, columns: Mapping[str, Any]) -> list[Any]:
    """Every objective's ``outputs`` on one flat block of torch tokens, in the namespace a kernel
    compiles in (module docstring): the registry's own ``_weight`` and ``_surrogate``, the
    per-token quantities (``r``, ``mu``, ``pi - mu``, ...) shared by all of them. What
    :class:`Kernel` compiles, one objective at a time."""
    import torch

    xp = _CompiledNamespace(_torch_namespace())
    t = objectives_mod.TokenTerms(xp, logp, logp_behavior, advantage, tuple(logp.shape), detach=True,
                                  columns=dict(columns))
    out = []
    for obj in objectives:
        out += _in_order(outputs, lambda obj=obj: t.full(obj._surrogate(t)), lambda obj=obj: t.full(obj._weight(t)),
                         torch)
    return out


def _in_order(outputs: Sequence[str], surrogate: Callable[[], Any], weight: Callable[[], Any], xp: Any) -> list[Any]:
    """``outputs`` of one objective, in order, from its ``surrogate()`` and ``weight()`` (the weight
    computed once, for the weight and the region code)."""
    out, w = [], None
    for name in outputs:
        if name == "surrogate":
            out.append(surrogate())
        else:
            if w is None:
                w = weight()
            out.append(w if name == "weight" else region_codes(xp, w))
    return out


class Kernel:
    """The fused kernels of one or several objectives (:func:`kernel` builds and caches them): one
    compiled pass over the tokens per elementwise objective computes all its outputs; the others
    run the eager registry beside them (``eager``, each with its reason). One loop per objective,
    not one for all: Inductor compiles a graph of many objectives' outputs into loops that
    recompute shared terms and hold many temporaries, slower in float64 than the eager registry
    (measured: 23 objectives, 1e6 tokens), where one objective's loop is 2-4 times faster than it."""

    def __init__(self, objectives: Mapping[str, objectives_mod.Objective], outputs: tuple[str, ...]) -> None:
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {list(outputs)}")
        if not objectives:
            raise ValueError("a kernel needs at least one objective")
        self.objectives = dict(objectives)
        self.outputs = tuple(outputs)
        self.columns = tuple(dict.fromkeys(c for o in self.objectives.values() for c in o.required_columns))
        self.eager = {label: f"{obj} is not elementwise (a sequence ratio or a batch statistic)"
                      for label, obj in self.objectives.items() if not obj.elementwise}
        self._compiled_labels = [label for label in self.objectives if label not in self.eager]
        self.first_call_seconds: dict[str, float] = {}
        if self._compiled_labels:
            self._fn, self.backend, self.reason = compile_function(self._formula, ", ".join(self._compiled_labels))
        else:
            self._fn, self.backend, self.reason = None, "eager", "no elementwise objective"

    def __repr__(self) -> str:
        return f"Kernel({list(self.objectives)}, outputs={self.outputs}, backend={self.backend!r})"

    def _formula(self, logp: Any, logp_behavior: Any, advantage: Any, *columns: Any,
                 label: str) -> tuple[Any, ...]:
        columns_by_name = dict(zip(self.columns, columns))
        return tuple(traced_outputs([self.objectives[label]], self.outputs, logp, logp_behavior, advantage,
                                    columns_by_name))

    def _formula_eager(self, logp: Any, logp_behavior: Any, advantage: Any, *columns: Any,
                       label: str) -> tuple[Any, ...]:
        return self._eager_outputs([label], logp, logp_behavior, advantage, columns, None)

    def _eager_outputs(self, labels: Sequence[str], logp: Any, logp_behavior: Any, advantage: Any,
                       columns: Sequence[Any], sample_id: Any) -> tuple[Any, ...]:
        given = dict(zip(self.columns, columns))
        out = []
        for label in labels:
            obj = self.objectives[label]
            extra = {c: given[c] for c in obj.required_columns}
            ids = sample_id if obj.per_sequence else None
            out += _in_order(self.outputs,
                             lambda obj=obj, ids=ids, extra=extra: obj.surrogate(logp, logp_behavior, advantage,
                                                                                 sample_id=ids, **extra),
                             lambda obj=obj, ids=ids, extra=extra: obj.weight(logp, logp_behavior, advantage,
                                                                              sample_id=ids, **extra),
                             namespace(logp))
        return tuple(out)

    def __call__(self, logp: Any, logp_behavior: Any, advantage: Any, *, sample_id: Any = None,
                 **columns: Any) -> dict[str, dict[str, Any]]:
        """``{label: {output: array}}`` over the tokens, in the inputs' broadcast shape: NumPy
        arrays for NumPy inputs, tensors for tensors (no gradient). The region code is float (NaN
        for a NaN weight). ``sample_id`` is read by the sequence-level objectives (eager)."""
        import torch

        missing = [c for c in self.columns if columns.get(c) is None]
        if missing:
            needs = [label for label, o in self.objectives.items() if missing[0] in o.required_columns]
            raise objectives_mod.MissingColumn(missing[0], f"{', '.join(needs)} need(s) {missing[0]}")
        xp, arrays = as_float_arrays(logp, logp_behavior, advantage, *(columns[c] for c in self.columns))
        numpy_in = not is_torch(xp)
        shape = tuple(np.broadcast_shapes(*(tuple(a.shape) for a in arrays)))
        if math.prod(shape) == 0:
            raise ValueError(f"empty input: the tokens have shape {shape}")
        # flat, contiguous, in the inputs' own kind: the eager objectives see what a caller of the
        # registry would pass them, the compiled ones torch views of the same memory
        flat = [xp.reshape(xp.broadcast_to(stop_gradient(a), shape), (-1,)) for a in arrays]
        flat = [np.ascontiguousarray(a) if numpy_in else a.contiguous() for a in flat]
        results: dict[str, tuple[Any, ...]] = {}
        if self._compiled_labels:
            if self.backend == "inductor":
                compiled = self._run_compiled(_torch_views(flat) if numpy_in else flat)
            if self.backend == "eager":  # switched off, or fallen back during the call above
                compiled = self._run_compiled(flat)
            elif numpy_in:
                compiled = tuple(c.numpy() for c in compiled)
            results.update(zip(self._compiled_labels, _chunks(compiled, len(self.outputs))))
        if self.eager:
            ids = None
            if sample_id is not None:
                ids = xp.reshape(xp.broadcast_to(xp.asarray(sample_id), shape), (-1,))
            with torch.no_grad():
                eager = self._eager_outputs(list(self.eager), *flat[:3], flat[3:], ids)
            results.update(zip(self.eager, _chunks(eager, len(self.outputs))))
        return {label: {name: xp.reshape(r, shape) for name, r in zip(self.outputs, results[label])}
                for label in self.objectives}

    def _run_compiled(self, flat: list[Any]) -> tuple[Any, ...]:
        import torch

        if self.backend == "eager":
            return tuple(v for label in self._compiled_labels for v in self._formula_eager(*flat, label=label))
        key = f"{flat[0].dtype}, {flat[0].device}"
        first = key not in self.first_call_seconds
        t0 = time.perf_counter()
        result: list[Any] = []
        try:
            with torch.no_grad(), _dynamo_limits():
                for label in self._compiled_labels:  # one compiled loop per objective (see Kernel)
                    result.extend(self._fn(*flat, label=label))
        except Exception as err:  # noqa: BLE001 (a compiler missing or failing: any error of Inductor's)
            if not first or self.backend == "eager":
                raise
            self._fall_back(f"torch.compile failed on the first call: {type(err).__name__}: {err}".splitlines()[0])
            return self._run_compiled(flat)
        if first:
            self.first_call_seconds[key] = time.perf_counter() - t0
        return tuple(result)

    def _fall_back(self, reason: str) -> None:
        self._fn, self.backend, self.reason = self._formula_eager, "eager", reason
        warnings.warn(f"fused kernel of {', '.join(self._compiled_labels)} runs the eager registry: {reason}",
                      RuntimeWarning, stacklevel=4)


def _torch_views(arrays: list[np.ndarray]) -> list[Any]:
    """Tensors sharing the arrays' memory; read-only arrays too (a kernel never writes its inputs,
    so torch's warning about them is silenced)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [torch.from_numpy(a) for a in arrays]


def _chunks(values: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values), size)]


def _dynamo_limits() -> Any:
    """Room for one compilation per kernel, dtype and device: every kernel's function has one code
    object, which torch.compile caches up to ``recompile_limit`` (8) variants of."""
    import torch

    return torch._dynamo.config.patch(recompile_limit=1024, accumulated_recompile_limit=4096)


def _torch_namespace() -> Any:
    import array_api_compat.torch as xp_torch

    return xp_torch


_CACHE: dict[tuple[Any, ...], Kernel] = {}


def kernel(objectives: str | objectives_mod.Objective | Mapping[str, objectives_mod.Objective],
           outputs: tuple[str, ...] = OUTPUTS) -> Kernel:
    """The fused kernel of ``objectives``: a registry name, an
    :class:`~drpo_sim.objectives.Objective` (labelled by its name), or ``{label: Objective}``, all
    computed in one pass. One kernel per objectives, parameters and outputs in a process."""
    if isinstance(objectives, str):
        objectives = objectives_mod.get(objectives)
    if isinstance(objectives, objectives_mod.Objective):
        objectives = {objectives.name: objectives}
    key = (tuple((label, type(o).__qualname__, str(o)) for label, o in objectives.items()), tuple(outputs))
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = Kernel(objectives, tuple(outputs))
    return found
