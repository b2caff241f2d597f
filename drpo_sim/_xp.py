"""Array-API plumbing shared by every objective.

The objectives in :mod:`drpo_sim.objectives` are written once against the Python array API
standard (through ``array_api_compat``), so the same code runs on NumPy arrays and on torch
tensors. This module holds the few things the standard does not say: which namespace a call
belongs to, which floating dtype it computes in, and how to stop a gradient.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat
import numpy as np

Array = Any  # a NumPy array or a torch tensor

_SCALARS = (bool, int, float)


def namespace(*values: Any) -> Any:
    """Return the array-API namespace of ``values`` (Python scalars are ignored).

    Raises ``TypeError`` naming the types when NumPy arrays and torch tensors are mixed in one
    call: the objectives return the same kind of array they receive, so a mixed call has no
    answer.
    """
    arrays = [v for v in values if not isinstance(v, _SCALARS)]
    if not arrays:
        return array_api_compat.array_namespace(np.asarray(0.0))
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = sorted({type(v).__module__ + "." + type(v).__name__ for v in arrays})
        raise TypeError(
            f"inputs must all be NumPy arrays or all torch tensors, got {', '.join(kinds)}"
        ) from err


_TORCH_NAMESPACES = ("torch", "array_api_compat.torch")


def is_torch(xp: Any) -> bool:
    """True when ``xp`` is the torch namespace, or a namespace wrapping it (``wraps``, as the one
    :mod:`drpo_sim.fused` compiles the formulas in)."""
    # by name, not array_api_compat.is_torch_namespace, whose lru_cache torch.compile cannot trace
    return getattr(getattr(xp, "wraps", xp), "__name__", None) in _TORCH_NAMESPACES


def compute_dtype(xp: Any, arrays: list[Array]) -> Any:
    """The floating dtype a call computes in.

    The promoted dtype of the inputs, except that integer and boolean inputs become the
    namespace's default float, and half precisions (float16, bfloat16) become float32: their
    range (largest float16 is 65504) cannot hold the importance ratios and squared ratios the
    objectives form, and no objective is meant to be evaluated in them.
    """
    dtypes = [a.dtype for a in arrays]
    dtype = xp.result_type(*dtypes) if dtypes else xp.float64
    if not xp.isdtype(dtype, "real floating"):
        return xp.float64 if not is_torch(xp) else _torch_default_float()
    if dtype not in (xp.float32, xp.float64):
        return xp.float32
    return dtype


def _torch_default_float() -> Any:
    # only called for torch inputs, so torch is loaded; importing it here would cost ``import
    # drpo_sim`` about 2 s for NumPy-only users
    return sys.modules["torch"].get_default_dtype()


def as_float_arrays(*values: Any) -> tuple[Any, list[Array]]:
    """Convert ``values`` (arrays, tensors, Python scalars, lists) to arrays of one float dtype.

    Returns the namespace and the converted arrays, in order. Shapes are left to broadcast.
    """
    xp = namespace(*values)
    where = next((device(v) for v in values if hasattr(v, "dtype")), None)
    arrays = [v if hasattr(v, "dtype") else xp.asarray(v, device=where) for v in values]
    dtype = compute_dtype(xp, [a for a, v in zip(arrays, values) if not isinstance(v, _SCALARS)])
    return xp, [a if a.dtype == dtype else xp.astype(a, dtype) for a in arrays]


def device(x: Array) -> Any:
    """The device ``x`` lives on (``"cpu"`` for NumPy): its own ``device`` attribute where it has
    one (torch tensors, NumPy >= 2 arrays), which torch.compile reads without tracing
    array_api_compat's type checks."""
    found = getattr(x, "device", None)
    return found if found is not None else array_api_compat.device(x)


def stop_gradient(x: Array) -> Array:
    """``sg(x)``: the value of ``x`` with no gradient flowing through it (identity for NumPy)."""
    return x.detach() if hasattr(x, "detach") else x


def requires_grad(x: Array) -> bool:
    """True for a torch tensor that takes part in autograd."""
    return bool(getattr(x, "requires_grad", False))
