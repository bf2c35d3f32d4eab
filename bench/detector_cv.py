"""Cross-validated NAB score of the anomaly detector: tuned on training files, scored held out.

Usage: ``nice -n 10 .venv/bin/python bench/detector_cv.py [--grid-size 16] [--k 5] [--seed 0]
[--tune PARAMETER ...] [--likelihood]``

Two strategies are compared on the same folds (see ``detectors/nab_cv.py``): the shipped
default with only the detection threshold tuned on the training files, and a subsample of
``DEFAULT_GRID`` (default first) from which each fold picks its configuration and threshold on
its training files. Every candidate scores the whole corpus once (about 7 s each on a loaded
2-core machine), then every fold reuses those scores. NAB data is read as in
``bench/detector.py`` (``../shared/nab`` or ``$MEDKIT_NAB_DIR``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.anomaly import AnomalyDetectorConfig  # noqa: E402
from detectors.nab_cv import (  # noqa: E402
    DEFAULT_GRID,
    Candidate,
    Fold,
    ScoredCorpus,
    Scorer,
    Summary,
    cross_validate,
    detector_scorer,
    leave_one_category_out,
    sample_grid,
    stratified_k_fold,
)
from detectors.nab_scoring import LabelledSeries, load_corpus  # noqa: E402

SHIPPED = AnomalyDetectorConfig()


class AnomalyLikelihood:
    """Numenta's anomaly likelihood (nupic ``AnomalyLikelihood`` + NAB's log score), per stream.

    Raw scores are averaged over the last ``averaging`` (Numenta: 10); a Gaussian is fitted to
    those averages over the last 8640 points (re-fitted every 100, skipping the first 288 while
    they are in the window, mean at least 0.03 and variance at least 0.0003); the likelihood is
    one minus the tail
    probability of the newest average, a second consecutive 'red' likelihood is lowered to
    'yellow', and the output is ``log(1.0000000001 - L) / log(1e-10)`` in [0, 1]. The first 388
    points output the log score of 0.5. It turns any raw score into a per-stream probability,
    so one threshold can fit streams whose raw scores live on different scales.
    """

    LEARNING = 288
    ESTIMATION = 100
    HISTORY = 8640
    REESTIMATE = 100
    RED = 1e-5
    YELLOW = 1e-3

    def __init__(self, averaging: int = 10) -> None:
        self.recent: deque[float] = deque(maxlen=averaging)
        self.averages: deque[float] = deque(maxlen=self.HISTORY)
        self.count = 0
        self.mean = 0.0
        self.std = 0.0
        self.previous = 1.0

    def update(self, raw: float) -> float:
        """The log-likelihood score of ``raw``, the newest raw score of this stream."""
        self.recent.append(raw)
        average = sum(self.recent) / len(self.recent)
        if self.count <= self.LEARNING + self.ESTIMATION:
            tail = 0.5
        else:
            if self.std == 0.0 or self.count % self.REESTIMATE == 0:
                self._estimate()
            x = average if average >= self.mean else 2.0 * self.mean - average
            tail = 0.5 * math.erfc((x - self.mean) / self.std / math.sqrt(2.0))
            raw_tail = tail
            if tail <= self.RED and self.previous <= self.RED:
                tail = self.YELLOW
            self.previous = raw_tail
        self.averages.append(average)
        self.count += 1
        return math.log(1.0000000001 - (1.0 - tail)) / math.log(1e-10)

    def _estimate(self) -> None:
        """Fit the Gaussian to the averages in the window, after the learning period."""
        skip = min(self.count, max(0, self.LEARNING - max(0, self.count - self.HISTORY)))
        sample = list(self.averages)[skip:]
        mean = statistics.fmean(sample)
        variance = statistics.pvariance(sample, mean)
        self.mean = max(mean, 0.03)
        self.std = math.sqrt(max(variance, 0.0003))


LIKELIHOOD_INPUTS = {
    "the shipped detector": SHIPPED,
    "the ungated surprise": SHIPPED.model_copy(update={"novelty_window": 0, "refractory": 0}),
}
"""Raw scores the likelihood is tried on: the shipped detector's, and its plain two-scale
surprise without novelty gate or refractory (closer to the noisy raw score Numenta feeds it)."""


def likelihood_scorer(config: AnomalyDetectorConfig, averaging: int = 10) -> Scorer:
    """Score a file with medkit's detector of ``config``, then Numenta's anomaly likelihood
    (raw scores averaged over ``averaging`` points; Numenta uses 10)."""
    raw = detector_scorer(config)

    def run(series: LabelledSeries) -> Sequence[float]:
        likelihood = AnomalyLikelihood(averaging)
        return array("d", (likelihood.update(score) for score in raw(series)))

    return run


def describe(config: AnomalyDetectorConfig) -> str:
    """The tuned fields of ``config`` that differ from the shipped default ('default' if none)."""
    changed = [
        f"{name}={getattr(config, name):g}"
        for name in sorted(DEFAULT_GRID)
        if getattr(config, name) != getattr(SHIPPED, name)
    ]
    return ", ".join(changed) or "default"


def report(title: str, summary: Summary, scored: ScoredCorpus) -> None:
    """Print one split's per-fold held-out scores, their spread, the pooled and category scores."""
    print(f"\n{title}")
    print(
        f"  {'fold':<30} {'files':>5} {'train':>6} {'held-out':>8} {'(own thr)':>9}"
        f" {'thr':>6} {'windows':>7} {'FP':>4}  chosen"
    )
    for r in summary.folds:
        print(
            f"  {r.fold.name:<30} {len(r.fold.test):>5} {r.train_score:>6.1f} {r.held_out:>8.1f}"
            f" {r.held_out_own_threshold:>9.1f} {r.threshold:>6.3f}"
            f" {r.windows_detected:>3}/{r.windows_total:<3} {r.fp_rows:>4}  {r.candidate}"
        )
    print(
        f"  held-out over folds: mean {summary.mean:.1f}, std {summary.std:.1f},"
        f" min {summary.minimum:.1f}, max {summary.maximum:.1f}; pooled over all files"
        f" {summary.pooled:.1f}"
    )
    cells = ", ".join(f"{c} {v:.1f}" for c, v in summary.per_category.items())
    print(f"  pooled per category: {cells}", flush=True)


def ensemble_scorer(scorers: Sequence[Scorer]) -> Scorer:
    """The larger of several detectors' scores at each row: alarms when any of them does, so
    detectors that miss different anomalies complement each other (at the cost of the false
    positives of both)."""

    def run(series: LabelledSeries) -> Sequence[float]:
        return array("d", map(max, *(scorer(series) for scorer in scorers)))

    return run


def main() -> int:
    """Score every candidate once, then cross-validate both strategies on both splits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grid-size", type=int, default=16, help="Configurations tried (>= 1).")
    parser.add_argument("--k", type=int, default=5, help="Folds of the k-fold split.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the k-fold and grid draws.")
    parser.add_argument(
        "--tune",
        nargs="+",
        default=sorted(DEFAULT_GRID),
        metavar="PARAMETER",
        help="Parameters of DEFAULT_GRID to tune (the others stay at their default); fewer"
        " parameters leave less room to fit the training files.",
    )
    parser.add_argument(
        "--likelihood",
        action="store_true",
        help="Also cross-validate Numenta's anomaly likelihood on top of the detector's scores.",
    )
    parser.add_argument(
        "--likelihood-averaging",
        type=int,
        default=10,
        metavar="N",
        help="Raw scores the likelihood averages (Numenta: 10; 1 reacts without delay).",
    )
    args = parser.parse_args()
    directory = Path(os.environ.get("MEDKIT_NAB_DIR", REPO.parent / "shared" / "nab"))
    if not (directory / "labels").is_dir():
        print(f"NAB data not found at {directory} (set MEDKIT_NAB_DIR)", file=sys.stderr)
        return 2
    corpus = load_corpus(directory)
    unknown = set(args.tune) - set(DEFAULT_GRID)
    if unknown:
        print(
            f"cannot tune {', '.join(sorted(unknown))}; tunable: {', '.join(DEFAULT_GRID)}", file=sys.stderr
        )
        return 2
    grid = {name: values for name, values in DEFAULT_GRID.items() if name in args.tune}
    configs = sample_grid(grid, args.grid_size, args.seed, SHIPPED)
    candidates = [Candidate(describe(c), detector_scorer(c)) for c in configs]
    fixed: list[tuple[str, list[int]]] = [("shipped default, threshold tuned", [0])]
    if len(configs) > 1:
        fixed.append(
            (f"configuration and threshold tuned ({len(configs)} configurations)", list(range(len(configs))))
        )
    if args.likelihood:
        for name, config in LIKELIHOOD_INPUTS.items():
            fixed.append((f"anomaly likelihood of {name}, threshold tuned", [len(candidates)]))
            candidates.append(
                Candidate(f"likelihood of {name}", likelihood_scorer(config, args.likelihood_averaging))
            )
        fixed.append(("ensemble, threshold tuned", [len(candidates)]))
        candidates.append(
            Candidate(
                "max(shipped detector, likelihood of the ungated surprise)",
                ensemble_scorer(
                    [
                        detector_scorer(SHIPPED),
                        likelihood_scorer(
                            LIKELIHOOD_INPUTS["the ungated surprise"], args.likelihood_averaging
                        ),
                    ]
                ),
            )
        )
    started = time.perf_counter()
    scored = ScoredCorpus(
        corpus,
        candidates,
        progress=lambda line: print(f"  [{time.perf_counter() - started:5.0f} s] {line}", flush=True),
    )
    splits: list[tuple[str, list[Fold]]] = [
        ("leave one category out", leave_one_category_out(corpus)),
        (f"stratified {args.k}-fold, seed {args.seed}", stratified_k_fold(corpus, args.k, args.seed)),
    ]
    for split, folds in splits:
        for strategy, allowed in fixed:
            report(
                f"{split}: {strategy} on training files",
                cross_validate(scored, folds, candidates=allowed),
                scored,
            )
    print(f"\n{len(corpus)} files, {len(candidates)} candidates, {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
