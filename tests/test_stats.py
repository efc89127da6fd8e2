"""ROC-AUC and TPR at a fixed FPR, checked against hand counts."""

import pytest

from tuco.stats import roc_auc, tpr_at_fpr


def test_auc_and_tpr_at_fpr_hand_computed():
    positive, negative = [0.9, 0.8, 0.3], [0.1, 0.2, 0.4, 0.5]
    # pairs (p > n): 0.9, 0.8 beat all 4; 0.3 beats 2 -> 10 of 12
    assert roc_auc(positive, negative) == pytest.approx(10 / 12)
    assert roc_auc(negative, positive) == pytest.approx(2 / 12)  # swapping the groups mirrors it
    assert tpr_at_fpr(positive, negative, fpr=0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(positive, negative, fpr=0.5) == pytest.approx(1.0)


def test_ties_count_half():
    assert roc_auc([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.5)


def brute_tpr_at_fpr(positive, negative, fpr):
    """Every threshold tried: the largest TPR among those with FPR <= fpr."""
    best = 0.0
    for t in sorted(set(positive) | set(negative)) + [float("inf")]:
        if sum(n >= t for n in negative) / len(negative) <= fpr + 1e-12:
            best = max(best, sum(p >= t for p in positive) / len(positive))
    return best


def test_tpr_at_fpr_counts_the_points_of_a_straight_stretch():
    # the curve is a straight line: roc_curve's default drops every point between its ends
    assert tpr_at_fpr([3, 2, 1, 0], [3, 2, 1, 0], fpr=0.5) == pytest.approx(0.5)


def test_tpr_at_fpr_equals_a_brute_force_search_with_ties():
    import random

    rng = random.Random(0)
    for trial in range(300):
        levels = rng.choice([2, 3, 5, 10])  # few distinct scores: many ties and collinear points
        positive = [rng.randrange(levels) for _ in range(rng.randint(1, 12))]
        negative = [rng.randrange(levels) for _ in range(rng.randint(1, 12))]
        target = rng.choice([0.0, 0.05, 0.1, 0.25, 0.5, 0.9])
        assert tpr_at_fpr(positive, negative, target) == pytest.approx(
            brute_tpr_at_fpr(positive, negative, target)
        ), (trial, positive, negative, target)
