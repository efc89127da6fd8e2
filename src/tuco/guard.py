"""A TuCo guard: flag prompts whose TuCo is unusually low, or high: the side the data says.

The paper reads jailbreaks as making fine-tuning matter less, so a jailbroken prompt's TuCo is low;
on some pairs attacks raise it instead (the demo pair). The guard is one threshold on the prompt's
TuCo, fitted on benign prompts so that at most a target fraction of them is flagged::

    >>> guard = calibrate(benign_tucos, fpr=0.05, attack_tucos=attack_tucos)
    >>> guard.direction, guard.auc, guard.auc_interval, guard.cv_tpr   # the side the attacks are on
    >>> guard.flags(0.12)
    >>> guard.save("guard.json"); Guard.load("guard.json")

Without attacks the guard is one-sided (low TuCo, the paper's) and untested. With attacks, the side is
the one where attacks sit (ROC-AUC of that side >= 0.5), reported with a bootstrap 95% interval and a
cross-validated TPR at the target FPR; a guard whose interval includes 0.5 cannot tell attacks from
benign prompts and is refused (``UntrustedGuard``) unless forced. The threshold is the ``fpr``
quantile of the benign TuCos on the guard's side: at most ``fpr`` of the calibration prompts pass it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DataError, UsageError

SIDES = ("below", "above")


class UntrustedGuard(UsageError):
    """The attacks' ROC-AUC interval includes 0.5: the guard cannot tell them from benign prompts."""


@dataclass
class Guard:
    threshold: float
    fpr: float  # the target false-positive rate on benign prompts
    benign: int  # how many benign prompts it was fitted on
    measured_fpr: float  # the fraction of them it flags
    attacks: int = 0
    tpr: float | None = None  # on the attack set, at this threshold
    auc: float | None = None  # ROC-AUC of the guard's side (-TuCo below, TuCo above), attacks vs benign
    models: dict = field(default_factory=dict)  # which pair it was fitted on
    direction: str = "below"  # flagged when TuCo < threshold ("below") or > threshold ("above")
    dtype: str | None = None  # the dtype its TuCos were computed in (None: an older guard)
    auc_interval: list[float] | None = None  # bootstrap 95% interval of auc
    cv_tpr: float | None = None  # TPR at the target FPR, 5-fold cross-validated (threshold fitted apart)
    tested: bool = False  # calibrated with attacks
    batching: str | None = None  # how its TuCos were batched (they do not depend on it in float32)
    forced: bool = False  # written although its AUC interval includes 0.5
    token_threshold: float | None = None  # the answer rule: the mean TuCo of the last token_window tokens
    token_window: int = 8
    answers: int = 0  # benign answers the answer rule was fitted on
    # the direction check on the attacks: does TuCo rise with alpha on this pair (experiments.direction)
    alpha_direction: dict | None = None

    def flags(self, tuco: float, threshold: float | None = None) -> bool:
        """Whether ``tuco`` is on the flagged side of the threshold (the guard's, or one given)."""
        limit = self.threshold if threshold is None else threshold
        return tuco < limit if self.direction == "below" else tuco > limit

    def token_flags(self, tucos: list[float | None]) -> bool:
        """The answer rule: whether the mean TuCo of the last ``token_window`` generated tokens is on
        the flagged side of ``token_threshold`` (never before that many tokens, nor without a rule)."""
        window = [t for t in tucos[-self.token_window :] if t is not None]
        if self.token_threshold is None or len(tucos) < self.token_window or not window:
            return False
        return self.flags(sum(window) / len(window), self.token_threshold)

    def answer_flags(self, tucos: list[float | None]) -> bool:
        """The answer rule over a whole answer: whether any window of it is flagged."""
        return any(self.token_flags(tucos[: n + 1]) for n in range(len(tucos)))

    def describe(self) -> str:
        return f"TuCo {'<' if self.direction == 'below' else '>'} {self.threshold:.4f}"

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
        if guard.direction not in SIDES or not math.isfinite(guard.threshold):
            raise DataError(
                f"{path}: threshold {guard.threshold!r}, direction {guard.direction!r}: not a guard"
            )
        return guard


def threshold_for(benign: list[float], fpr: float, direction: str) -> float:
    """The threshold that flags at most ``fpr`` of ``benign`` on ``direction``'s side (ties unflagged)."""
    ordered = sorted(benign, reverse=direction == "above")
    k = math.floor(fpr * len(ordered))  # flag the k most extreme: k / n <= fpr
    if k >= len(ordered):
        return math.inf if direction == "below" else -math.inf
    return ordered[k]


def side_auc(attacks: list[float], benign: list[float], direction: str) -> float:
    from .stats import roc_auc

    sign = -1.0 if direction == "below" else 1.0
    return roc_auc([sign * t for t in attacks], [sign * t for t in benign])


def calibrate(
    benign: list[float],
    fpr: float = 0.05,
    attack_tucos: list[float] | None = None,
    *,
    force: bool = False,
    seed: int = 0,
    resamples: int = 1000,
) -> Guard:
    """The guard for these benign prompt TuCos (and attacks, which choose its side)."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be between 0 and 1, not {fpr}")
    if not benign:
        raise ValueError("no benign prompts to calibrate on")
    direction = "below"
    if attack_tucos:
        direction = "below" if side_auc(attack_tucos, benign, "below") >= 0.5 else "above"
    threshold = threshold_for(benign, fpr, direction)
    guard = Guard(threshold=threshold, fpr=fpr, benign=len(benign), measured_fpr=0.0, direction=direction)
    guard.measured_fpr = sum(guard.flags(t) for t in benign) / len(benign)
    if attack_tucos:
        guard.tested, guard.attacks = True, len(attack_tucos)
        guard.tpr = sum(guard.flags(t) for t in attack_tucos) / len(attack_tucos)
        guard.auc = side_auc(attack_tucos, benign, direction)
        guard.auc_interval = _bootstrap_auc(attack_tucos, benign, direction, seed, resamples)
        guard.cv_tpr = _cross_validated_tpr(attack_tucos, benign, fpr, seed)
        if guard.auc_interval[0] <= 0.5 and not force:
            lo, hi = guard.auc_interval
            raise UntrustedGuard(
                f"the attacks' ROC-AUC is {guard.auc:.3f} with a 95% interval of [{lo:.3f}, {hi:.3f}], which "
                "includes 0.5: on these prompts TuCo cannot tell attacks from benign ones. Give more "
                "prompts, or --force to write this guard anyway"
            )
        guard.forced = guard.auc_interval[0] <= 0.5
    return guard


def _bootstrap_auc(
    attacks: list[float], benign: list[float], direction: str, seed: int, n: int
) -> list[float]:
    """A percentile bootstrap 95% interval of the side's ROC-AUC (both groups resampled)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.asarray(attacks), np.asarray(benign)
    values = sorted(
        side_auc(list(rng.choice(a, len(a))), list(rng.choice(b, len(b))), direction) for _ in range(n)
    )
    return [float(values[int(0.025 * n)]), float(values[min(n - 1, int(0.975 * n))])]


def _cross_validated_tpr(
    attacks: list[float], benign: list[float], fpr: float, seed: int, folds: int = 5
) -> float | None:
    """TPR on held-out attacks of a guard (side and threshold) fitted on the other folds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a_fold = rng.permutation(len(attacks)) % folds
    b_fold = rng.permutation(len(benign)) % folds
    caught, total = 0, 0
    for k in range(folds):
        train_a = [t for t, f in zip(attacks, a_fold, strict=True) if f != k]
        train_b = [t for t, f in zip(benign, b_fold, strict=True) if f != k]
        held = [t for t, f in zip(attacks, a_fold, strict=True) if f == k]
        if not train_a or not train_b or not held:
            continue
        side = "below" if side_auc(train_a, train_b, "below") >= 0.5 else "above"
        fold_guard = Guard(threshold_for(train_b, fpr, side), fpr, len(train_b), 0.0, direction=side)
        caught += sum(fold_guard.flags(t) for t in held)
        total += len(held)
    return caught / total if total else None


def calibrate_answers(guard: Guard, answers: list[list[float]], window: int = 8) -> Guard:
    """Fit the answer rule on benign answers' token TuCos: the threshold that flags at most the
    guard's ``fpr`` of them anywhere (their most extreme window mean, on the guard's side)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    extremes = []
    for tucos in answers:
        means = [sum(tucos[i : i + window]) / window for i in range(len(tucos) - window + 1)]
        if means:
            extremes.append(min(means) if guard.direction == "below" else max(means))
    if not extremes:
        raise ValueError(f"no benign answer has {window} tokens: generate longer answers or a smaller window")
    guard.token_threshold = threshold_for(extremes, guard.fpr, guard.direction)
    guard.token_window, guard.answers = window, len(extremes)
    return guard


def verdict(
    guard: Guard | None, tuco: float | None, *, threshold: float | None = None, on_error: str = "open"
) -> bool:
    """Whether a prompt (or answer) with this TuCo is flagged: by ``guard`` (its side), at its own
    threshold or the one a request gives; no guard and no threshold: never. A TuCo that could not be
    computed (None, NaN) is flagged when ``on_error`` is "closed" and passed when "open"."""
    if guard is None and threshold is None:
        return False
    if tuco is None or not math.isfinite(tuco):
        return on_error == "closed"
    if guard is None:
        assert threshold is not None
        return tuco < threshold  # a request's own threshold without a server guard: the paper's side
    return guard.flags(tuco, threshold)
