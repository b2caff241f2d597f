"""drpo_sim.arena.task: the walk's rule, its demonstrations and its reward, by hand."""

from __future__ import annotations

import pytest
import torch

from drpo_sim.arena.task import WalkTask


def test_rule_and_reward_by_hand_on_cpu():
    task = WalkTask(vocab_size=8, n_classes=4, response_len=3)
    # key 1, start 2: each class must be its predecessor's plus 1 (mod 4); row 3: 6 is wrong after 2,
    # 4 wrong after 6, 5 right after 4 (each token is checked against its own predecessor)
    seqs = torch.tensor([[1, 2, 7, 4, 1], [1, 2, 3, 3, 2], [1, 2, 6, 4, 5]])
    assert task.right(seqs).tolist() == [[True, True, True], [True, False, False], [False, False, True]]
    assert task.reward(seqs).tolist() == pytest.approx([1.0, 1 / 3, 1 / 3])


def test_demonstrations_are_always_right_and_long_tailed_on_cpu():
    task = WalkTask()
    demo = task.demonstrations(256, torch.Generator().manual_seed(0))
    assert demo.shape == (256, task.seq_len)
    assert bool(task.right(demo).all())
    members = demo[:, task.prompt_len:] // task.n_classes
    freq = torch.bincount(members.flatten(), minlength=task.class_size).float() / members.numel()
    assert torch.allclose(freq, task.tail_probs(), atol=0.01)
    tail = task.tail_probs().double()
    ranks = torch.arange(1, task.class_size + 1, dtype=torch.float64)
    torch.testing.assert_close(tail[0] / tail, ranks ** task.zipf, rtol=1e-6, atol=0)
    assert float(WalkTask(zipf=2.5).tail_probs()[-1]) < 0.01  # the calibrated tail holds rare right tokens


def test_misread_demonstrations_walk_with_one_wrong_key_throughout_on_cpu():
    task = WalkTask(misread=0.25)
    demo = task.demonstrations(4000, torch.Generator().manual_seed(1))
    reward = task.reward(demo)
    # every demonstration is a consistent walk: all right (its own key) or all wrong (another key)
    assert set(reward.unique().tolist()) == {0.0, 1.0}
    assert abs(float((reward == 0).float().mean()) - 0.25) < 0.02
    wrong = demo[reward == 0]
    step = (wrong[:, 3:] - wrong[:, 2:-1]) % task.n_classes  # the key the walk uses, at every position
    assert bool((step == step[:, :1]).all()) and bool((step[:, 0] != wrong[:, 0] % task.n_classes).all())
    # without misreads the data and its random stream are the plain task's
    plain = WalkTask().demonstrations(64, torch.Generator().manual_seed(2))
    assert torch.equal(plain, WalkTask(misread=0.0).demonstrations(64, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 60}, "multiple of n_classes"),
    ({"n_classes": 64}, "at least 2 tokens"),
    ({"response_len": 0}, "positive integer"),
    ({"zipf": -1.0}, "zipf"),
    ({"misread": 1.0}, "misread must be a share"),
    ({"misread": True}, "misread must be a share"),
])
def test_impossible_tasks_are_refused_on_cpu(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WalkTask(**kwargs)


def test_wrong_length_is_refused_on_cpu():
    with pytest.raises(ValueError, match="sequences must have length 66"):
        WalkTask().right(torch.zeros(2, 10, dtype=torch.long))
