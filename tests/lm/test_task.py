"""drpo_sim.lm.task: the sorting task's layout, its reward on hand-made cases, and the response mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drpo_sim.lm.task import BOS, EOS, PAD, SEP, SortTask, response_mask


def test_sort_task_layout_and_reward_on_hand_made_cases_on_cpu():
    task = SortTask(n_digits=3)
    digits = torch.tensor([[3, 1, 2]] * 6)
    assert task.prompts(digits)[0].tolist() == [BOS, 3, 1, 2, SEP]
    assert task.targets(digits)[0].tolist() == [1, 2, 3, EOS]
    responses = torch.tensor([
        [1, 2, 3, EOS],      # exact
        [1, 3, 2, EOS],      # two positions wrong
        [1, 2, EOS, PAD],    # stopped early: positions 3 and 4 wrong
        [1, 2, EOS, EOS],    # anything after the first EOS counts as PAD
        [3, 2, 1, 5],        # only the middle digit right
        [EOS, 1, 2, 3],      # stops at once: nothing right
    ])
    np.testing.assert_allclose(task.reward(responses, digits).numpy(), [1.0, 0.5, 0.5, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(task.reward(responses, digits, "exact").numpy(), [1, 0, 0, 0, 0, 0])
    assert response_mask(responses).tolist()[2] == [True, True, True, False]
    assert response_mask(responses).tolist()[5] == [True, False, False, False]
    with pytest.raises(ValueError, match="reward_mode"):
        SortTask(reward_mode="fuzzy")


def test_sequences_of_the_task_score_one_on_cpu():
    task = SortTask()
    digits = task.sample_digits(50, torch.Generator().manual_seed(0))
    seqs = task.sequences(digits)
    assert seqs.shape == (50, task.seq_len)
    assert torch.all(task.reward(seqs[:, task.prompt_len:], digits) == 1)
