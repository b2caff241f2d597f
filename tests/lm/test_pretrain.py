"""drpo_sim.lm.pretrain: supervised pretraining, cached by configuration and deterministic."""

from __future__ import annotations

import pytest
import torch

from drpo_sim.lm.pretrain import PretrainConfig, checkpoint_path, load_checkpoint, pretrain


def test_pretrain_is_cached_and_deterministic(tmp_path):
    cfg = PretrainConfig(steps=3, seed=7)
    a = pretrain(cfg, tmp_path)
    assert a.path is not None and a.path.exists() and cfg.key() in a.path.name
    assert a.path == checkpoint_path(cfg, tmp_path)
    b = pretrain(cfg, tmp_path)  # loaded, not trained
    fresh = pretrain(cfg)  # trained again, no cache
    assert fresh.path is None
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]) and torch.equal(a.state_dict[k], fresh.state_dict[k])
    assert load_checkpoint(a.path).config == cfg
    assert PretrainConfig(steps=4, seed=7).key() != cfg.key()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
