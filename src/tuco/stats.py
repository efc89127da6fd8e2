"""How well TuCo separates two groups of prompts: ROC-AUC and the true-positive rate at a fixed
false-positive rate (scikit-learn's metrics). Used by the report, the demo and the experiments.

    >>> roc_auc(positive=[0.3, 0.4], negative=[0.1, 0.2])
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC-AUC of a score separating ``positive`` (higher expected) from ``negative`` values."""
    from sklearn.metrics import roc_auc_score

    y = [1] * len(positive) + [0] * len(negative)
    return float(roc_auc_score(y, list(positive) + list(negative)))


def tpr_at_fpr(positive: Sequence[float], negative: Sequence[float], fpr: float = 0.05) -> float:
    """The largest true-positive rate over every threshold whose false-positive rate is at most
    ``fpr`` (positives score higher; a score at the threshold is flagged, ties with it too). Every
    threshold counts: ``roc_curve`` by default drops the points on a straight stretch of the curve,
    and with ties the best admissible one can be among them."""
    from sklearn.metrics import roc_curve

    y = [1] * len(positive) + [0] * len(negative)
    fprs, tprs, _ = roc_curve(y, list(positive) + list(negative), drop_intermediate=False)
    return float(tprs[fprs <= fpr + 1e-12].max())
