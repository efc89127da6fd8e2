import math

import torch

from tuco import metrics


def test_tuco_hand_computed():
    p = torch.tensor([[3.0, -1.0]])  # ||P||_1 = 4
    f = torch.tensor([[0.5, -0.5]])  # ||F||_1 = 1
    assert abs(metrics.tuco(p, f).item() - 1 / 5) < 1e-7
    # L2: ||F|| = sqrt(0.5), ||P|| = sqrt(10)
    expected = math.sqrt(0.5) / (math.sqrt(10) + math.sqrt(0.5))
    assert abs(metrics.tuco(p, f, 2).item() - expected) < 1e-7


def test_ratio_zero_when_nothing_moves():
    assert metrics.ratio(torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0
    assert metrics.ratio(torch.tensor([2.0]), torch.tensor([0.0])).item() == 1.0
    assert math.isnan(
        metrics.ratio(torch.tensor([float("nan")]), torch.tensor([1.0])).item()
    )  # overflow shows


def test_output_contribution_hand_computed():
    x_pt = torch.tensor([1.0, -1.0, 2.0])  # ||x_PT||_1 = 4
    x_ft = torch.tensor([1.0, 0.0, 1.0])  # diff = [0, 1, -1], norm 2
    assert abs(metrics.output_contribution(x_pt, x_ft).item() - 2 / 6) < 1e-7


def test_kl_hand_computed():
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.25, 0.75]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert abs(metrics.kl_divergence(p, q).item() - expected) < 1e-6
    assert metrics.kl_divergence(p, p).item() == 0.0
