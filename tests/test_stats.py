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
