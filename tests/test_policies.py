"""drpo_sim.policies: the tabular and shared-feature parameterisations, their gradients by autograd."""

import numpy as np
import torch

from drpo_sim.policies import SharedFeatureLogits, TabularLogits


def test_shared_features_gradient_matches_autograd_on_cpu():
    rng = np.random.default_rng(1)
    z0 = rng.normal(size=(3, 5))
    pol = SharedFeatureLogits(z0=z0, n_features=4)
    params = pol.init(z0, 2, rng.standard_normal((2, 8, 4)))
    g = rng.normal(size=(2, 3, 5))
    grads = pol.backward(params, g)
    h = torch.tensor(params["h"], requires_grad=True)
    e = torch.tensor(params["e"], requires_grad=True)
    (torch.sum((torch.tensor(z0) + h @ e.transpose(1, 2)) * torch.tensor(g))).backward()
    np.testing.assert_allclose(grads["h"], h.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads["e"], e.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(pol.logits(params), z0 + params["h"] @ params["e"].transpose(0, 2, 1))


def test_shared_features_couple_tokens_tabular_does_not_on_cpu():
    rng = np.random.default_rng(2)
    z0 = np.zeros((1, 6))
    g = np.zeros((1, 1, 6))
    g[0, 0, 2] = 1.0  # push one token's logit
    tab = TabularLogits()
    p = tab.init(z0, 1)
    moved = tab.backward(p, g)["z"]
    assert np.count_nonzero(moved) == 1
    sh = SharedFeatureLogits(z0=z0, n_features=3)
    ps = sh.init(z0, 1, rng.standard_normal((1, 7, 3)))
    step = {k: ps[k] + 0.1 * gk for k, gk in sh.backward(ps, g).items()}
    dz = sh.logits(step) - sh.logits(ps)
    assert np.count_nonzero(np.abs(dz) > 1e-6) == 6  # every token's logit moved
