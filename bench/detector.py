"""Benchmark of the anomaly detector: NAB scores of the candidates and points per second.

Usage: ``.venv/bin/python bench/detector.py [--grid] [--robustness]``; the scores here are
in-sample (measured on the files the defaults were chosen on): ``bench/detector_cv.py`` gives
the held-out ones.

NAB data is read from ``../shared/nab`` relative to the repo root, or from ``$MEDKIT_NAB_DIR``.
The baseline is NAB's windowed Gaussian (mean and standard deviation of the last 1000 values,
score = 1 - two-sided Gaussian tail), implemented plainly with O(1) running sums so that the
throughput ratio compares like with like.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.anomaly import (  # noqa: E402
    AnomalyDetector,
    AnomalyDetectorConfig,
    seasonal_strength,
)
from detectors.nab_scoring import LabelledSeries, load_corpus, score_corpus  # noqa: E402

Scorer = Callable[[Sequence[datetime], Sequence[float]], list[float]]


class WindowedGaussian:
    """NAB's windowed-Gaussian baseline: tail probability against the last ``window`` values."""

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        self.values: deque[float] = deque()
        self.total = 0.0
        self.squares = 0.0

    def update(self, value: float) -> float:
        """Score ``value`` against the window, then slide the window."""
        score = 0.0
        count = len(self.values)
        if count:
            mean = self.total / count
            std = math.sqrt(max(self.squares / count - mean * mean, 0.0)) or 1e-6
            score = 1.0 - math.erfc(abs(value - mean) / std / math.sqrt(2.0))
        self.values.append(value)
        self.total += value
        self.squares += value * value
        if count + 1 > self.window:
            old = self.values.popleft()
            self.total -= old
            self.squares -= old * old
        return score


def baseline_scores(_: Sequence[datetime], values: Sequence[float]) -> list[float]:
    """Score a series with the windowed-Gaussian baseline."""
    detector = WindowedGaussian()
    return [detector.update(v) for v in values]


def medkit_scorer(config: AnomalyDetectorConfig) -> Scorer:
    """A scorer running medkit's detector with ``config``."""

    def run(timestamps: Sequence[datetime], values: Sequence[float]) -> list[float]:
        detector = AnomalyDetector(config)
        return [detector.update(t, v) for t, v in zip(timestamps, values, strict=True)]

    return run


def nab_dir() -> Path:
    """The NAB data directory: ``$MEDKIT_NAB_DIR`` or ``../shared/nab`` from the repo root."""
    return Path(os.environ.get("MEDKIT_NAB_DIR", REPO.parent / "shared" / "nab"))


def print_scores(name: str, corpus: list[LabelledSeries], scores: list[list[float]]) -> None:
    """Print the NAB scores (all three profiles) of per-file ``scores`` on ``corpus``."""
    results = score_corpus(list(zip(corpus, scores, strict=True)))
    cells = "  ".join(
        f"{r.profile}={r.normalized:5.1f} (thr {r.threshold:.3f}, FP rows {r.fp},"
        f" windows {r.windows_detected}/{r.windows_total})"
        for r in results.values()
    )
    print(f"{name:<44} {cells}", flush=True)


def evaluate(name: str, scorer: Scorer, corpus: list[LabelledSeries]) -> list[list[float]]:
    """Print the NAB scores of ``scorer`` on ``corpus``; returns its per-file scores."""
    scores = [scorer(series.timestamps, series.values) for series in corpus]
    print_scores(name, corpus, scores)
    return scores


def robustness(corpus: list[LabelledSeries], scores: list[list[float]]) -> None:
    """Scores of one detector on each NAB category and on two halves of the files.

    The halves are the files of even and odd rank by name; each half has its own optimised
    threshold, so a detector that only fits some files shows a gap between them.
    """
    categories = sorted({series.name.split("/")[0] for series in corpus})
    for category in categories:
        picked = [i for i, s in enumerate(corpus) if s.name.startswith(category + "/")]
        if any(corpus[i].windows for i in picked):
            print_scores(
                f"  {category}", [corpus[i] for i in picked], [scores[i] for i in picked]
            )
    for parity, label in ((0, "even"), (1, "odd")):
        picked = list(range(parity, len(corpus), 2))
        print_scores(
            f"  half: files of {label} rank",
            [corpus[i] for i in picked],
            [scores[i] for i in picked],
        )


def throughput(scorer: Scorer, corpus: list[LabelledSeries], repeats: int = 3) -> float:
    """Best-of-``repeats`` points per second of ``scorer`` over the corpus, single-threaded."""
    points = sum(len(series.values) for series in corpus)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for series in corpus:
            scorer(series.timestamps, series.values)
        best = min(best, time.perf_counter() - started)
    return points / best


def main() -> int:
    """Run the candidate comparison and the throughput measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--grid",
        action="store_true",
        help="Also print NAB scores with each hyperparameter moved around its default.",
    )
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="Also print the default's scores per NAB category and on two halves of the files.",
    )
    args = parser.parse_args()
    directory = nab_dir()
    if not (directory / "labels").is_dir():
        print(f"NAB data not found at {directory} (set MEDKIT_NAB_DIR)", file=sys.stderr)
        return 2
    corpus = load_corpus(directory)
    points = sum(len(series.values) for series in corpus)
    print(f"NAB dev corpus: {len(corpus)} files, {points} points, from {directory}", flush=True)
    seasonal_strength([0.0, 1.0] * 10, 2)  # import statsmodels before any timing
    default = AnomalyDetectorConfig()
    plain = {"smooth": 0, "slow": 0, "novelty_window": 0, "alarm_level": 0.6}
    candidates: list[tuple[str, Scorer]] = [
        ("baseline: windowed Gaussian (NAB)", baseline_scores),
        (
            "A: + unsaturated score",
            medkit_scorer(AnomalyDetectorConfig(seasonal=False, refractory=0, **plain)),
        ),
        ("B: A + alarm refractory", medkit_scorer(AnomalyDetectorConfig(seasonal=False, **plain))),
        ("C: A + season removal", medkit_scorer(AnomalyDetectorConfig(refractory=0, **plain))),
        ("D: A + season + refractory (first default)", medkit_scorer(AnomalyDetectorConfig(**plain))),
        (
            "E: D + novelty gate",
            medkit_scorer(
                AnomalyDetectorConfig(smooth=0, slow=0, novelty_window=4000, alarm_level=0.5)
            ),
        ),
        (
            "F: D + level time scale (no gate)",
            medkit_scorer(AnomalyDetectorConfig(slow=0, novelty_window=0, alarm_level=0.5)),
        ),
        ("G: default without refractory", medkit_scorer(AnomalyDetectorConfig(refractory=0))),
        ("H: default without season", medkit_scorer(AnomalyDetectorConfig(seasonal=False))),
        (
            "I: E + F, gated (previous default)",
            medkit_scorer(AnomalyDetectorConfig(slow=0)),
        ),
    ]
    if args.grid:
        grid: list[tuple[str, float]] = [
            *(("alarm_level", v) for v in (0.4, 0.45, 0.6)),
            *(("refractory", v) for v in (100, 300, 500)),
            *(("smooth", v) for v in (10, 50, 100)),
            *(("slow", v) for v in (50, 200, 400)),
            *(("novelty_window", v) for v in (1000, 2000, 8000)),
            *(("window", v) for v in (500, 2000)),
        ]
        candidates += [
            (
                f"default, {field}={value:g}",
                medkit_scorer(default.model_copy(update={field: value})),
            )
            for field, value in grid
        ]
    print("NAB scores (null=0, perfect=100), threshold optimised per profile:", flush=True)
    for name, scorer in candidates:
        evaluate(name, scorer, corpus)
    scores = evaluate("medkit: I + slow scale (default)", medkit_scorer(default), corpus)
    if args.robustness:
        print("Default detector per category and per half of the files:", flush=True)
        robustness(corpus, scores)
    print("Throughput, single thread, best of 3 passes over the corpus:", flush=True)
    base = throughput(baseline_scores, corpus)
    ours = throughput(medkit_scorer(default), corpus)
    print(f"baseline windowed Gaussian: {base:,.0f} points/s")
    print(f"medkit detector:            {ours:,.0f} points/s")
    print(f"ratio medkit / baseline:    {ours / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
