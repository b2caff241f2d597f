"""Policy parameterisations, vectorised over seeds: ``params -> logits [N, S, V]`` and back.

* ``tabular``: one free logit per (state, token), ``z = theta``. Updating one token's logit moves
  the other tokens of that state only through the softmax normaliser.
* ``shared``: logits from shared low-rank features, ``z[s, v] = z0[s, v] + h_s . e_v`` with
  trainable state features ``h [S, d]`` and token embeddings ``e [V, d]`` (a bilinear "network").
  A gradient on one token moves its embedding and the state's features, and through them the
  logits of other tokens and other states, as the shared weights of a transformer do.
  ``z0`` holds the environment's initial Zipf logits; ``h`` and ``e`` start small and random.

Gradients are written by hand (the chain rule through ``z``), so the simulator needs no autograd:
for ``shared``, ``dL/dh = G e`` and ``dL/de = G^T h`` with ``G = dL/dz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Params = dict[str, np.ndarray]
POLICIES = ("tabular", "shared")


class Policy(Protocol):
    def init(self, z0: np.ndarray, n_seeds: int, draws: np.ndarray | None = None) -> Params: ...
    def logits(self, params: Params) -> np.ndarray: ...
    def backward(self, params: Params, grad_logits: np.ndarray) -> Params: ...


@dataclass(frozen=True)
class TabularLogits:
    """``z = theta``, initialised at the environment's logits for every seed."""

    n_features = 0

    def init(self, z0: np.ndarray, n_seeds: int, draws: np.ndarray | None = None) -> Params:
        return {"z": np.repeat(z0[None], n_seeds, axis=0)}

    def logits(self, params: Params) -> np.ndarray:
        return params["z"]

    def backward(self, params: Params, grad_logits: np.ndarray) -> Params:
        return {"z": grad_logits}


@dataclass(frozen=True)
class SharedFeatureLogits:
    """``z = z0 + h @ e^T`` with ``h [N, S, d]``, ``e [N, V, d]`` (see the module docstring)."""

    z0: np.ndarray
    n_features: int = 16
    init_scale: float = 0.1

    def init(self, z0: np.ndarray, n_seeds: int, draws: np.ndarray | None = None) -> Params:
        """``draws``: standard normals of shape ``[N, S + V, d]`` from each seed's stream."""
        s, v = z0.shape
        d = self.n_features
        if draws is None or draws.shape != (n_seeds, s + v, d):
            raise ValueError(f"shared features need standard normal draws of shape {(n_seeds, s + v, d)}")
        return {"h": self.init_scale * draws[:, :s].copy(), "e": self.init_scale * draws[:, s:].copy()}

    def logits(self, params: Params) -> np.ndarray:
        return self.z0[None] + params["h"] @ params["e"].transpose(0, 2, 1)

    def backward(self, params: Params, grad_logits: np.ndarray) -> Params:
        return {"h": grad_logits @ params["e"], "e": grad_logits.transpose(0, 2, 1) @ params["h"]}


def make_policy(name: str, z0: np.ndarray, *, n_features: int = 16, init_scale: float = 0.1) -> Policy:
    if name == "tabular":
        return TabularLogits()
    if name == "shared":
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        return SharedFeatureLogits(z0=z0, n_features=n_features, init_scale=init_scale)
    raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")


def log_softmax(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``z - logsumexp(z)`` over the last axis; ``-inf`` logits (truncated tokens) stay ``-inf``.

    ``out``: an array of ``z``'s shape to write the result into (it may be ``z`` itself), so that
    a caller stepping through blocks reuses its buffers; the values are the same either way.
    """
    m = np.max(z, axis=-1, keepdims=True)
    shifted = np.subtract(z, m, out=out)
    lse = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return np.subtract(shifted, lse, out=shifted)
