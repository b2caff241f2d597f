"""The engine's bfloat16 / float16 matrix products on the CPU, bit for bit as torch computes them, fast.

On a CPU without native bfloat16 / float16 matrix units (every AVX2 machine; torch uses oneDNN's
reduced-precision path only with AVX-512 or AMX), torch 2.x computes a batched product ``x @ w`` of
reduced-precision tensors with its reference kernels (``aten/src/ATen/native/LinearAlgebra.cpp``,
``bmm_out_or_baddbmm_``, and ``aten/src/ATen/native/cpu/BlasKernel.cpp``, ``gemm_notrans_`` with the
``sum`` helper):

* every product of two factors is formed in float32, exactly (bfloat16 and float16 significands
  have 8 and 11 bits, so their product fits float32's 24);
* if ``contraction x rows x columns < 400`` (:data:`NAIVE_BELOW`), each dot product is one
  sequential float32 sum, starting from 0;
* otherwise each dot product is summed in :data:`GEMM_LANES` float32 partial sums, lane ``j``
  taking terms ``j, j + 4, j + 8, ...`` in order (lane 0 then also the ``k mod 4`` last terms, in
  order), and the lanes are added as ``((s0 + s1) + s2) + s3``;
* a bias (``baddbmm`` with ``beta = 1``) is added to that sum in float32, and the result is rounded
  once to the reduced dtype.

That kernel runs one scalar loop per output element, 17 to 25 times slower than a float32
``bmm`` of the same shapes; the arena's engine spent most of its time there. :func:`reduced_bmm` computes
the same numbers from float32 operations whose order is fixed: it gives each lane to one float32
``bmm`` over that lane's terms (a float32 product of ``k / 4`` terms, summed in order by the BLAS's
inner loop), then adds the lanes and the bias as the kernel does. The engine's attention, thousands
of tiny products (one query against each cached key), takes :func:`reduced_dot` instead, which adds
the exact products one at a time in the same order. A transposed operand takes yet another kernel
(a vectorised dot product with its own order), which this module does not reproduce:
:func:`matmul` leaves such products to torch.

The equality is tested, on random operands of every shape the arena uses, against the definition
written out term by term and, where torch uses that kernel (:func:`torch_uses_reference_kernel`;
torch 2.13 on this project's AVX2 machines), against ``torch.bmm`` / ``torch.baddbmm``, and whole
rollouts against the engine with torch's own kernels (``tests/arena/test_reduced.py``). On a
machine where torch would use oneDNN instead, the engine's products keep the reference kernel's
numbers, so they no longer depend on the CPU's matrix units (its other reduced-precision
operations, softmax, GELU, LayerNorm, are torch's, whose vector width may still vary).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

REDUCED = (torch.bfloat16, torch.float16)
GEMM_LANES = 4
"""The float32 partial sums of torch's reference kernel (its ``sum`` helper's ``ilp_factor``)."""
NAIVE_BELOW = 400
"""Below this ``contraction x rows x columns``, torch's batched product sums each dot product in one
sequential float32 sum (its naive kernel) instead of :data:`GEMM_LANES` lanes."""


_enabled = True


@contextmanager
def torch_kernels() -> Iterator[None]:
    """Within this context every product is left to torch's own kernels: the same numbers, slower
    (for the benchmark's side-by-side timing and the tests' end-to-end check)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def torch_uses_reference_kernel(dtype: torch.dtype) -> bool:
    """Whether torch itself computes CPU products of ``dtype`` with the reference kernel this module
    reproduces, rather than oneDNN's (which it uses where the CPU has AVX-512 or AMX units for that
    dtype, and which sums in another order): where not, the engine's numbers are the reference
    kernel's, not those of ``torch.bmm`` on that machine."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    return not getattr(torch.ops.mkldnn, check)()


def active(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this module computes products of ``dtype`` on ``device``: bfloat16 / float16 on the
    CPU, outside :func:`torch_kernels`."""
    return _enabled and dtype in REDUCED and device.type == "cpu"


def emulated(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :func:`reduced_bmm` reproduces torch's ``x @ w`` here (:func:`active`, and both operands
    contiguous: a transposed one takes another kernel, as the fp8 engine's weights do)."""
    return active(x.dtype, x.device) and x.is_contiguous() and w.is_contiguous()


def lanes_for(contraction: int, rows: int, cols: int) -> int:
    """The partial sums of torch's reference kernel for one product's shape: 1 (its naive kernel,
    one sequential sum) below :data:`NAIVE_BELOW`, else :data:`GEMM_LANES`."""
    return 1 if contraction * rows * cols < NAIVE_BELOW else GEMM_LANES


def matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [N, n, k] @ w [N, k, m]`` (``+ bias``, broadcast to ``[N, n, m]``) in the operands' dtype:
    :func:`reduced_bmm` where it reproduces torch (:func:`emulated`), else ``torch.bmm`` /
    ``torch.baddbmm`` (float32, a GPU, a transposed operand)."""
    if emulated(x, w):
        return reduced_bmm(x, w, bias)
    return torch.bmm(x, w) if bias is None else torch.baddbmm(bias, x, w)


def reduced_bmm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch's reference kernel for a reduced-precision ``x [N, n, k] @ w [N, k, m] (+ bias)`` (module
    docstring), from float32 ``bmm`` calls: one per lane's ``k // lanes`` terms, all lanes in one
    call, the ``k mod lanes`` last terms added to lane 0 one by one, then the lanes, then ``bias``."""
    n_batch, rows, k = x.shape
    cols = w.shape[-1]
    lanes = lanes_for(k, rows, cols)
    main = k - k % lanes
    xf, wf = x.float(), w.float()
    if main:
        per = main // lanes
        x_lanes = xf[..., :main].reshape(n_batch, rows, per, lanes).permute(0, 3, 1, 2).reshape(-1, rows, per)
        w_lanes = wf[:, :main].reshape(n_batch, per, lanes, cols).permute(0, 2, 1, 3).reshape(-1, per, cols)
        # + 0.0: each partial sum starts from +0, so one whose terms are all -0 is +0
        part = torch.bmm(x_lanes, w_lanes).view(n_batch, lanes, rows, cols) + 0.0
    else:
        part = torch.zeros(n_batch, lanes, rows, cols, dtype=torch.float32, device=x.device)
    acc = part[:, 0]
    for i in range(main, k):
        acc = acc + xf[:, :, i, None] * wf[:, None, i, :]
    for j in range(1, lanes):
        acc = acc + part[:, j]
    if bias is not None:
        acc = bias.float() + acc
    return acc.to(x.dtype)


def reduced_dot(a: torch.Tensor, b: torch.Tensor, lanes: int) -> torch.Tensor:
    """``sum_i a[i] * b[i]`` over the first axis of float32 ``a [k, ...]`` and ``b [k, ...]`` (the
    rest broadcast), holding values of a reduced dtype, as torch's reference kernel with ``lanes``
    partial sums (:func:`lanes_for`) sums a dot product, one term at a time (each product exact, so
    ``addcmul`` adds it with one rounding), in float32: the engine's attention, whose products are
    thousands of tiny ones (one query against each cached key), which one ``bmm`` per lane would
    compute slower than torch does, and this way 2 to 7 times faster."""
    k = a.shape[0]
    part = [torch.zeros(torch.broadcast_shapes(a.shape[1:], b.shape[1:]), device=a.device) for _ in range(lanes)]
    main = k - k % lanes
    for i in range(main):
        part[i % lanes].addcmul_(a[i], b[i])
    for i in range(main, k):
        part[0].addcmul_(a[i], b[i])
    acc = part[0]
    for j in range(1, lanes):
        acc = acc + part[j]
    return acc
