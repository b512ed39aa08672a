"""SFT's token-mean NLL and the Bradley-Terry loss on hand-worked numbers."""

from __future__ import annotations

import torch

from lightning_rlhf.losses import bradley_terry_loss, sft_loss


def test_bradley_terry_hand_worked():
    # margins 1 and -2: losses log(1+e^-1) = 0.31326, log(1+e^2) = 2.12693; mean 1.22009
    loss, stats = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(loss, torch.tensor(1.220096), atol=1e-5, rtol=0)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == -0.5


def test_sft_loss_ignores_minus_inf_at_masked_positions():
    logprobs = torch.tensor([[-1.0, float("-inf")], [-2.0, -4.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    loss, stats = sft_loss(logprobs, mask)
    torch.testing.assert_close(loss, torch.tensor(7.0 / 3))  # (1 + 2 + 4) / 3 tokens
    assert stats["tokens"].item() == 3
