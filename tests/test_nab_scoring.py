"""The NAB scorer reproduces hand-computed scores on tiny synthetic files."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from detectors.nab_scoring import (
    PROFILES,
    LabelledSeries,
    SweepRows,
    best_threshold,
    normalize,
    null_score,
    probation_length,
    scaled_sigmoid,
    score_at_threshold,
    score_corpus,
    sweep_thresholds,
)

START = datetime(2024, 1, 1)
N = 100
WINDOW = (50, 59)  # rows, inclusive: width 10


def series() -> LabelledSeries:
    """100 rows, one labelled window over rows 50-59, probation = 15 rows."""
    stamps = [START + timedelta(minutes=5 * i) for i in range(N)]
    return LabelledSeries("tiny.csv", stamps, [0.0] * N, [(stamps[WINDOW[0]], stamps[WINDOW[1]])])


def detections(*rows: int, score: float = 1.0) -> list[float]:
    """A detector that outputs ``score`` at ``rows`` and 0 elsewhere."""
    out = [0.0] * N
    for row in rows:
        out[row] = score
    return out


def normalized(scores: list[float], profile: str = "standard") -> float:
    return score_corpus([(series(), scores)])[profile].normalized


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


MAX_TP = 2 * sig(5) - 1


def test_scaled_sigmoid_landmarks() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.5) == -1.0


def test_probation_is_15_percent_capped_at_750() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(20000) == 750


def test_perfect_detector_scores_100_and_null_0() -> None:
    for profile in PROFILES:
        assert normalized(detections(WINDOW[0]), profile) == pytest.approx(100.0)
        assert normalized([0.0] * N, profile) == pytest.approx(0.0)


def test_late_detection_hand_computed() -> None:
    # Row 58 of a 10-row window ending at 59: position -(59 - 58 + 1) / 10 = -0.2.
    tp = (2 * sig(1.0) - 1) / MAX_TP
    assert normalized(detections(58)) == pytest.approx(100 * (tp + 1) / 2)
    assert normalized(detections(58), "reward_low_FN_rate") == pytest.approx(100 * (tp + 2) / 3)


def test_early_detection_beats_late() -> None:
    assert normalized(detections(51)) > normalized(detections(55)) > normalized(detections(59))


def test_only_first_detection_in_window_counts() -> None:
    assert normalized(detections(50, 52, 57)) == pytest.approx(100.0)


def test_false_positive_weights() -> None:
    # An FP with no preceding window costs the full fp weight.
    assert normalized(detections(20, 50)) == pytest.approx(100 * (1 - 0.11 + 1) / 2)
    low_fp = score_corpus([(series(), detections(20, 50))])["reward_low_FP_rate"]
    assert low_fp.normalized == pytest.approx(100 * (1 - 0.22 + 1) / 2)
    assert low_fp.fp == 1
    # Just after the window it costs less: position |59 - 61| / (10 - 1).
    near = 0.11 * (2 * sig(-5 * 2 / 9) - 1)
    assert normalized(detections(50, 61)) == pytest.approx(100 * (1 + near + 1) / 2)
    # More than 3 window lengths after it, the full weight again.
    assert normalized(detections(50, 95)) == pytest.approx(100 * (1 - 0.11 + 1) / 2)


def test_probationary_rows_are_ignored() -> None:
    assert normalized(detections(5, 50)) == pytest.approx(100.0)


def test_threshold_is_optimised() -> None:
    # The FP scores highest; the best threshold (0.9) keeps the TP and pays for the FP.
    scores = detections(20)
    scores[50] = 0.9
    result = score_corpus([(series(), scores)])["standard"]
    assert result.threshold == 0.9
    assert result.normalized == pytest.approx(100 * (1 - 0.11 + 1) / 2)
    assert result.windows_detected == 1


def test_score_at_a_fixed_threshold_matches_the_sweep() -> None:
    """Scoring at a threshold fixed in advance (held-out scoring) gives the sweep's entry for
    it, on two pooled files, at every threshold the sweep visits and between them."""
    first = detections(20, 55, 70)
    first[30], first[52] = 0.4, 0.7
    second = detections(5, 40, 61, score=0.6)
    pooled = SweepRows.of_file(series(), first)
    pooled.extend(SweepRows.of_file(series(), second))
    assert pooled.n_windows == 2
    profile = PROFILES["standard"]
    for entry in sweep_thresholds(pooled, profile):
        for threshold in (entry.threshold, entry.threshold - 1e-9):
            at = score_at_threshold(pooled, profile, threshold)
            if threshold == entry.threshold:
                assert (at.tp, at.tn, at.fp, at.fn) == (entry.tp, entry.tn, entry.fp, entry.fn)
                assert at.score == pytest.approx(entry.score)
            assert at.score <= best_threshold(sweep_thresholds(pooled, profile)).score + 1e-12
    assert null_score(pooled, profile) == pytest.approx(-2.0)


def test_pooled_rows_rescored_match_score_corpus() -> None:
    """Rows laid out once and rescored (`with_scores`) score as `score_corpus` does."""
    scores = detections(20, 55)
    layout = SweepRows.of_file(series(), [0.0] * N)
    rows = layout.with_scores(scores)
    profile = PROFILES["standard"]
    best = best_threshold(sweep_thresholds(rows, profile))
    expected = score_corpus([(series(), scores)])["standard"]
    assert best.score == pytest.approx(expected.raw_score)
    assert normalize(best.score, null_score(rows, profile), 1.0) == pytest.approx(
        expected.normalized
    )
    with pytest.raises(ValueError):
        layout.with_scores([0.0])
