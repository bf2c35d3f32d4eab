"""Numenta Anomaly Benchmark (NAB v1.1) scoring, reimplemented faithfully as a small library.

The rules follow the public numenta/NAB repository (``nab/sweeper.py``, ``nab/optimizer.py``,
``nab/runner.py`` and ``config/profiles.json``) so that medkit's detector can be tuned and
reported on the same scale as published NAB results:

* the first 15% of each file, capped at 750 rows, is probationary and not scored;
* a row inside a labelled window scores ``scaled_sigmoid(-(right - i + 1) / width) * tp / maxTP``
  (earlier is better; only the best detection per window counts), a window without a detection
  costs ``-fn``;
* a row outside every window scores ``scaled_sigmoid(distance past the preceding window) * fp``
  (``-fp`` when no window precedes it);
* one threshold per profile is chosen to maximise the corpus total (NAB's sweep optimiser);
* totals are normalised so the null detector scores 0 and a perfect one 100.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PROBATION_PERCENT = 0.15
"""Share of each file (from its start) that NAB leaves unscored while detectors warm up."""

PROBATION_CAP = PROBATION_PERCENT * 5000
"""NAB caps the probationary period at 15% of 5000 rows, i.e. 750 rows."""

_OUTSIDE = -1
_PROBATION = -2


@dataclass(frozen=True)
class CostProfile:
    """One NAB application profile: the weights of true positives, false positives and misses."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_FN_rate": CostProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}
"""The three profiles of NAB v1.1 (config/profiles.json)."""


@dataclass
class LabelledSeries:
    """A NAB data file: its rows and its labelled anomaly windows (inclusive timestamps)."""

    name: str
    timestamps: list[datetime]
    values: list[float]
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)


@dataclass(frozen=True)
class ThresholdScore:
    """The raw corpus score and row counts obtained when detecting at ``score >= threshold``."""

    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int


@dataclass(frozen=True)
class ProfileResult:
    """A detector's NAB result for one profile, with the baselines used to normalise it."""

    profile: str
    threshold: float
    raw_score: float
    null_score: float
    perfect_score: float
    normalized: float
    tp: int
    fp: int
    fn: int
    windows_detected: int
    windows_total: int


def sigmoid(x: float) -> float:
    """The logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def scaled_sigmoid(relative_position: float) -> float:
    """NAB's weight of a detection at a relative position to a window's right edge.

    -1 is the window's left edge (about 0.987), 0 its right edge (0), positive values are
    false positives past the window, saturating at -1 beyond 3 window lengths.
    """
    if relative_position > 3.0:
        return -1.0
    return 2.0 * sigmoid(-5.0 * relative_position) - 1.0


def probation_length(n_rows: int) -> float:
    """Rows at the start of a file of ``n_rows`` rows that are not scored (NAB semantics)."""
    return min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_CAP)


@dataclass
class SweepRows:
    """Per-row data of one or more files, ready for the threshold sweep.

    ``weights`` and ``window_ids`` depend only on the files and their labels, ``scores`` on the
    detector, so one layout can be rescored for many detectors (`with_scores`) and files can be
    pooled (`extend`) without recomputing the windows: cross-validation does both many times.
    """

    scores: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    window_ids: list[int] = field(default_factory=list)
    n_windows: int = 0

    @classmethod
    def of_file(cls, series: LabelledSeries, anomaly_scores: Sequence[float]) -> SweepRows:
        """The rows of one labelled file scored with ``anomaly_scores``."""
        rows = cls()
        _add_file(rows, series.timestamps, anomaly_scores, series.windows)
        return rows

    def with_scores(self, anomaly_scores: Sequence[float]) -> SweepRows:
        """The same rows and windows scored by another detector (the layout is shared)."""
        if len(anomaly_scores) != len(self.scores):
            raise ValueError("anomaly scores and rows differ in length")
        return SweepRows(list(anomaly_scores), self.weights, self.window_ids, self.n_windows)

    def extend(self, other: SweepRows) -> None:
        """Append another file's (or corpus') rows, renumbering its windows after ours."""
        base = self.n_windows
        self.scores.extend(other.scores)
        self.weights.extend(other.weights)
        self.window_ids.extend(w + base if w >= 0 else w for w in other.window_ids)
        self.n_windows += other.n_windows


def _index_windows(
    timestamps: Sequence[datetime], windows: Sequence[tuple[datetime, datetime]]
) -> list[tuple[int, int]]:
    """Row ranges ``(left, right)`` of each window, matching NAB's inclusive timestamp bounds."""
    ranges: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        inside = [i for i, t in enumerate(timestamps) if start <= t <= end]
        if inside:
            ranges.append((inside[0], inside[-1]))
    return ranges


def _add_file(
    rows: SweepRows,
    timestamps: Sequence[datetime],
    anomaly_scores: Sequence[float],
    windows: Sequence[tuple[datetime, datetime]],
) -> None:
    """Append one file's rows with NAB's unweighted per-row sweep scores (``calcSweepScore``).

    ``weights`` holds the unweighted TP score divided by maxTP for rows in a window (so the
    profile's tp weight multiplies it) and the unweighted FP score for rows outside.
    """
    if len(timestamps) != len(anomaly_scores):
        raise ValueError("timestamps and anomaly scores differ in length")
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_length(len(timestamps))
    ranges = _index_windows(timestamps, windows)
    base_id = rows.n_windows
    rows.n_windows += len(ranges)
    window_of = [_OUTSIDE] * len(timestamps)
    for k, (left, right) in enumerate(ranges):
        for i in range(left, right + 1):
            window_of[i] = k
    prev_right: int | None = None
    prev_width = 0.0
    for i, score in enumerate(anomaly_scores):
        k = window_of[i]
        if k != _OUTSIDE:
            left, right = ranges[k]
            width = float(right - left + 1)
            weight = scaled_sigmoid(-(right - i + 1) / width) / max_tp
            if i == right:
                prev_right, prev_width = right, width
        elif prev_right is None:
            weight = -1.0
        else:
            weight = scaled_sigmoid(abs(prev_right - i) / max(prev_width - 1.0, 1.0))
        rows.scores.append(float(score))
        rows.weights.append(weight)
        if i < probation:
            rows.window_ids.append(_PROBATION)
        else:
            rows.window_ids.append(base_id + k if k != _OUTSIDE else _OUTSIDE)


def sweep_thresholds(rows: SweepRows, profile: CostProfile) -> list[ThresholdScore]:
    """Corpus score at each distinct threshold, from 1.1 (nothing detected) downwards.

    This is NAB's ``calcScoreByThreshold``.

    Windows whose rows are all probationary are ignored, as in NAB.
    """
    order = sorted(
        (i for i, w in enumerate(rows.window_ids) if w != _PROBATION),
        key=lambda i: rows.scores[i],
        reverse=True,
    )
    best_in_window: dict[int, float] = {}
    for i in order:
        w = rows.window_ids[i]
        if w != _OUTSIDE:
            best_in_window[w] = -profile.fn_weight
    window_total = sum(best_in_window.values())
    fp_total = 0.0
    tn = sum(1 for i in order if rows.window_ids[i] == _OUTSIDE)
    fn = len(order) - tn
    tp = fp = 0
    result: list[ThresholdScore] = []
    current = 1.1
    for i in order:
        score = rows.scores[i]
        if score != current:
            result.append(ThresholdScore(current, window_total + fp_total, tp, tn, fp, fn))
            current = score
        w = rows.window_ids[i]
        if w == _OUTSIDE:
            fp += 1
            tn -= 1
            fp_total += rows.weights[i] * profile.fp_weight
        else:
            tp += 1
            fn -= 1
            gain = rows.weights[i] * profile.tp_weight
            if gain > best_in_window[w]:
                window_total += gain - best_in_window[w]
                best_in_window[w] = gain
    result.append(ThresholdScore(current, window_total + fp_total, tp, tn, fp, fn))
    return result


def score_at_threshold(rows: SweepRows, profile: CostProfile, threshold: float) -> ThresholdScore:
    """Raw corpus score when detecting at ``score >= threshold``, a threshold fixed in advance.

    It equals the sweep's entry for that threshold; held-out scoring needs it because the
    threshold must come from the training files, not be optimised on the files being scored.
    The raw score is a sum over files, so held-out files scored apart can be pooled by adding.
    """
    best_in_window: dict[int, float] = {}
    fp_total = 0.0
    tp = fp = tn = fn = 0
    for score, weight, w in zip(rows.scores, rows.weights, rows.window_ids, strict=True):
        if w == _PROBATION:
            continue
        detected = score >= threshold
        if w == _OUTSIDE:
            if detected:
                fp += 1
                fp_total += weight * profile.fp_weight
            else:
                tn += 1
            continue
        best_in_window.setdefault(w, -profile.fn_weight)
        if detected:
            tp += 1
            best_in_window[w] = max(best_in_window[w], weight * profile.tp_weight)
        else:
            fn += 1
    return ThresholdScore(threshold, sum(best_in_window.values()) + fp_total, tp, tn, fp, fn)


def null_score(rows: SweepRows, profile: CostProfile) -> float:
    """Raw score of NAB's null detector (all scores 0, threshold optimised) on these rows."""
    return best_threshold(sweep_thresholds(rows.with_scores([0.0] * len(rows.scores)), profile)).score


def normalize(raw: float, null: float, perfect: float) -> float:
    """NAB's normalisation: 0 for the null detector, 100 for a perfect one (0 if they tie)."""
    span = perfect - null
    return 100.0 * (raw - null) / span if span else 0.0


def best_threshold(scores: Sequence[ThresholdScore]) -> ThresholdScore:
    """The highest-scoring threshold; ties go to the higher threshold, as NAB's stable sort does."""
    best = scores[0]
    for candidate in scores[1:]:
        if candidate.score > best.score:
            best = candidate
    return best


def _windows_detected(rows: SweepRows, threshold: float) -> int:
    """How many windows hold at least one scored row at or above ``threshold``."""
    hit = {
        w
        for s, w in zip(rows.scores, rows.window_ids, strict=True)
        if w >= 0 and s >= threshold
    }
    return len(hit)


def score_corpus(
    results: Sequence[tuple[LabelledSeries, Sequence[float]]],
    profiles: Sequence[CostProfile] = tuple(PROFILES.values()),
) -> dict[str, ProfileResult]:
    """NAB-normalised scores of a detector's per-row anomaly scores over a corpus.

    ``results`` pairs every file with the detector's scores for its rows. For each profile the
    threshold is optimised over the whole corpus, the null baseline is the optimised score of an
    all-zero detector on the same files, and perfect is one full-weight TP per labelled window.
    """
    rows = SweepRows()
    null_rows = SweepRows()
    n_windows = 0
    for series, scores in results:
        _add_file(rows, series.timestamps, scores, series.windows)
        _add_file(null_rows, series.timestamps, [0.0] * len(scores), series.windows)
        n_windows += len(series.windows)
    out: dict[str, ProfileResult] = {}
    for profile in profiles:
        best = best_threshold(sweep_thresholds(rows, profile))
        null = best_threshold(sweep_thresholds(null_rows, profile)).score
        perfect = n_windows * profile.tp_weight
        span = perfect - null
        normalized = 100.0 * (best.score - null) / span if span else 0.0
        out[profile.name] = ProfileResult(
            profile=profile.name,
            threshold=best.threshold,
            raw_score=best.score,
            null_score=null,
            perfect_score=perfect,
            normalized=normalized,
            tp=best.tp,
            fp=best.fp,
            fn=best.fn,
            windows_detected=_windows_detected(rows, best.threshold),
            windows_total=n_windows,
        )
    return out


def parse_timestamp(text: str) -> datetime:
    """Parse a NAB timestamp such as ``2014-04-10 16:15:00`` or ``2014-04-10 16:15:00.000000``."""
    return datetime.fromisoformat(text.strip())


def load_labels(path: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """Read a NAB ``combined_windows*.json`` file: file path -> list of (start, end) windows."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of file -> windows")
    labels: dict[str, list[tuple[datetime, datetime]]] = {}
    for name, windows in raw.items():
        labels[str(name)] = [(parse_timestamp(s), parse_timestamp(e)) for s, e in windows]
    return labels


def load_series(path: Path, name: str = "") -> LabelledSeries:
    """Read a ``timestamp,value`` CSV (with header) into a series without windows."""
    timestamps: list[datetime] = []
    values: list[float] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            timestamps.append(parse_timestamp(row[0]))
            values.append(float(row[1]))
    return LabelledSeries(name or path.name, timestamps, values)


def load_corpus(
    nab_dir: Path, labels_file: str = "labels/combined_windows_dev.json"
) -> list[LabelledSeries]:
    """Load every labelled file of a NAB directory (``data/`` and a labels JSON), sorted by name."""
    labels = load_labels(nab_dir / labels_file)
    corpus: list[LabelledSeries] = []
    for name in sorted(labels):
        series = load_series(nab_dir / "data" / name, name)
        series.windows = labels[name]
        corpus.append(series)
    return corpus
