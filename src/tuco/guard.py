"""A TuCo guard: flag prompts whose TuCo is unusually low (the TuCo paper's jailbreak signal).

Jailbreaks work by making fine-tuning matter less, so a jailbroken prompt's TuCo is low. The guard
is one threshold on the prompt's TuCo, fitted on benign prompts alone (no attacks needed) so that a
target fraction of them is flagged::

    >>> guard = calibrate(benign_tucos, fpr=0.05, attack_tucos=attack_tucos)
    >>> guard.flags(0.12), guard.tpr                 # TuCo below the threshold: flagged
    >>> guard.save("guard.json"); Guard.load("guard.json")

The threshold is the ``fpr`` quantile of the benign TuCos (the lowest value not below that
fraction of them): at most ``fpr`` of the calibration prompts fall under it. With an attack set,
the true-positive rate at that threshold and the ROC-AUC of low TuCo are reported beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DataError, UsageError


@dataclass
class Guard:
    threshold: float
    fpr: float  # the target false-positive rate on benign prompts
    benign: int  # how many benign prompts it was fitted on
    measured_fpr: float  # the fraction of them it flags
    attacks: int = 0
    tpr: float | None = None  # on the attack set, at this threshold
    auc: float | None = None  # ROC-AUC of -TuCo, attacks vs benign
    models: dict = field(default_factory=dict)  # which pair it was fitted on
    direction: str = "below"  # flagged when TuCo < threshold
    dtype: str | None = None  # the dtype its TuCos were computed in (None: an older guard)

    def flags(self, tuco: float) -> bool:
        return tuco < self.threshold

    def check_dtype(self, dtype: str) -> None:
        """Refuse to guard a server that computes in another dtype than the calibration did: TuCo
        moves with the dtype (float32 vs bf16: up to about 1e-2), and the false-positive rate with it."""
        if self.dtype is not None and self.dtype != dtype:
            raise UsageError(
                f"the guard was calibrated in {self.dtype}, the server runs in {dtype}: its threshold "
                f"would not keep its false-positive rate. Serve with --dtype {self.dtype}, or "
                f"calibrate again with --dtype {dtype}"
            )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Guard:
        try:
            data = json.loads(Path(path).read_text())
            guard = cls(**data)
        except OSError as e:
            raise DataError(
                f"{path}: cannot read the guard ({e.strerror or e}); make one with tuco calibrate"
            ) from e
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: not a guard written by tuco calibrate ({e})") from e
        if guard.direction != "below" or not math.isfinite(guard.threshold):
            raise DataError(
                f"{path}: threshold {guard.threshold!r}, direction {guard.direction!r}: not a guard"
            )
        return guard


def calibrate(benign: list[float], fpr: float = 0.05, attack_tucos: list[float] | None = None) -> Guard:
    """The threshold that flags at most ``fpr`` of ``benign`` prompt TuCos, and its TPR on attacks."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be between 0 and 1, not {fpr}")
    if not benign:
        raise ValueError("no benign prompts to calibrate on")
    ordered = sorted(benign)
    k = math.floor(fpr * len(ordered))  # flag the k lowest: k / n <= fpr
    threshold = ordered[k] if k < len(ordered) else math.inf
    measured = sum(t < threshold for t in ordered) / len(ordered)
    guard = Guard(threshold=threshold, fpr=fpr, benign=len(ordered), measured_fpr=measured)
    if attack_tucos:
        from .stats import roc_auc

        guard.attacks = len(attack_tucos)
        guard.tpr = sum(t < threshold for t in attack_tucos) / len(attack_tucos)
        guard.auc = roc_auc([-t for t in attack_tucos], [-t for t in benign])
    return guard
