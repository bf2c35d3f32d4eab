"""The cross-validation harness: folds never leak a file, and held-out scores are honest."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bench.detector_cv import AnomalyLikelihood
from detectors.anomaly import AnomalyDetectorConfig
from detectors.nab_cv import (
    DEFAULT_GRID,
    Candidate,
    Fold,
    ScoredCorpus,
    category_of,
    cross_validate,
    detector_scorer,
    leave_one_category_out,
    sample_grid,
    stratified_k_fold,
)
from detectors.nab_scoring import LabelledSeries, load_labels, load_series

REPO = Path(__file__).resolve().parent.parent
NAB_DIR = REPO.parent / "shared" / "nab"
START = datetime(2024, 1, 1)


def synthetic(name: str, n: int = 200, window_at: int | None = 150) -> LabelledSeries:
    """A flat file with one labelled window of 10 rows at ``window_at`` (none if None)."""
    stamps = [START + timedelta(minutes=5 * i) for i in range(n)]
    windows = [] if window_at is None else [(stamps[window_at], stamps[window_at + 9])]
    return LabelledSeries(name, stamps, [0.0] * n, windows)


CORPUS = [
    synthetic("artificialNoAnomaly/a.csv", window_at=None),
    synthetic("artificialWithAnomaly/b.csv"),
    *(synthetic(f"realTraffic/t{i}.csv") for i in range(4)),
    *(synthetic(f"realTweets/w{i}.csv") for i in range(5)),
    synthetic("realKnownCause/k.csv"),
]


def assert_partition(folds: list[Fold], n_files: int) -> None:
    """No file on both sides of a fold, every file on one side, every file tested exactly once."""
    tested: list[int] = []
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        assert sorted(fold.train + fold.test) == list(range(n_files))
        assert fold.test
        tested.extend(fold.test)
    assert sorted(tested) == list(range(n_files))


def test_leave_one_category_out_holds_out_whole_categories() -> None:
    folds = leave_one_category_out(CORPUS)
    assert_partition(folds, len(CORPUS))
    assert [f.name for f in folds] == [
        "category artificial",
        "category realKnownCause",
        "category realTraffic",
        "category realTweets",
    ]
    for fold in folds:
        held = {category_of(CORPUS[i]) for i in fold.test}
        assert len(held) == 1
        assert held.isdisjoint(category_of(CORPUS[i]) for i in fold.train)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_stratified_k_fold_is_a_seeded_partition(k: int) -> None:
    folds = stratified_k_fold(CORPUS, k, seed=1)
    assert len(folds) == k
    assert_partition(folds, len(CORPUS))
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert stratified_k_fold(CORPUS, k, seed=1) == folds
    # Each category is spread over the folds rather than kept together.
    tweets = {n for n, f in enumerate(folds) for i in f.test if "Tweets" in CORPUS[i].name}
    assert len(tweets) == min(k, 5)


def test_k_fold_refuses_impossible_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        stratified_k_fold(CORPUS, 1, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        stratified_k_fold(CORPUS, len(CORPUS) + 1, seed=0)


def test_sample_grid_starts_with_the_default_and_draws_distinct_configs() -> None:
    default = AnomalyDetectorConfig()
    configs = sample_grid(DEFAULT_GRID, 10, seed=3, always=default)
    assert configs[0] == default
    assert len(configs) == len(set(map(repr, configs))) == 10
    assert sample_grid(DEFAULT_GRID, 10, seed=3, always=default) == configs


def spike_scorer(at: int, height: float) -> Candidate:
    """A fake detector that outputs ``height`` at row ``at`` of labelled files, 0 elsewhere."""

    def run(series: LabelledSeries) -> list[float]:
        return [height if series.windows and i == at else 0.0 for i in range(len(series.values))]

    return Candidate(f"spike at {at}", run)


def test_threshold_comes_from_the_training_files() -> None:
    """A detector whose scores on the held-out file are all below the threshold learnt on the
    training files scores 0 held out, even though an optimised threshold would score 100."""
    corpus = [synthetic("realTraffic/t.csv"), synthetic("realTweets/w.csv")]

    def run(series: LabelledSeries) -> list[float]:
        height = 0.9 if "Traffic" in series.name else 0.4
        return [height if i == 150 else 0.0 for i in range(len(series.values))]

    scored = ScoredCorpus(corpus, [Candidate("scaled", run)])
    summary = cross_validate(scored, leave_one_category_out(corpus))
    by_name = {r.fold.name: r for r in summary.folds}
    tweets = by_name["category realTweets"]
    assert tweets.threshold == 0.9
    assert tweets.held_out == pytest.approx(0.0)
    assert tweets.held_out_own_threshold == pytest.approx(100.0)
    traffic = by_name["category realTraffic"]
    assert traffic.threshold == 0.4
    assert traffic.held_out == pytest.approx(100.0)
    assert summary.pooled == pytest.approx(50.0)
    assert summary.per_category == {"realTraffic": pytest.approx(100.0), "realTweets": 0.0}


def test_tuning_picks_the_candidate_that_is_best_on_training_files() -> None:
    """Candidate 0 only raises false positives (before every window), candidate 1 hits every
    window at its left edge: tuning picks 1 everywhere; restricted to 0, the tuned threshold
    detects nothing, which is what the null detector scores."""
    scored = ScoredCorpus(CORPUS, [spike_scorer(60, 1.0), spike_scorer(150, 1.0)])
    folds = stratified_k_fold(CORPUS, 3, seed=0)
    summary = cross_validate(scored, folds)
    assert {r.candidate for r in summary.folds} == {"spike at 150"}
    assert summary.mean == pytest.approx(100.0)
    assert summary.std == pytest.approx(0.0)
    assert summary.pooled == pytest.approx(100.0)
    only_first = cross_validate(scored, folds, candidates=[0])
    assert {r.candidate for r in only_first.folds} == {"spike at 60"}
    assert {r.threshold for r in only_first.folds} == {1.1}
    assert only_first.maximum == pytest.approx(0.0)
    assert only_first.minimum == pytest.approx(0.0)


@pytest.mark.skipif(not (NAB_DIR / "labels").is_dir(), reason=f"NAB dev data not at {NAB_DIR}")
def test_small_cross_validation_on_nab_files() -> None:
    """A real (small) run: 6 short NAB files of 3 categories, two detector configurations
    (most of its time is the one-off statsmodels import of the seasonality check)."""
    labels = load_labels(NAB_DIR / "labels" / "combined_windows_dev.json")
    names = [
        "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
        "realAdExchange/exchange-2_cpm_results.csv",
        "realAdExchange/exchange-4_cpc_results.csv",
        "realAdExchange/exchange-4_cpm_results.csv",
        "realTraffic/occupancy_6005.csv",
        "realTraffic/speed_t4013.csv",
    ]
    corpus = []
    for name in names:
        series = load_series(NAB_DIR / "data" / name, name)
        series.windows = labels[name]
        corpus.append(series)
    configs = [AnomalyDetectorConfig(), AnomalyDetectorConfig(alarm_level=0.6, smooth=10)]
    scored = ScoredCorpus(corpus, [Candidate(str(i), detector_scorer(c)) for i, c in enumerate(configs)])
    for folds in (leave_one_category_out(corpus), stratified_k_fold(corpus, 3, seed=0)):
        summary = cross_validate(scored, folds)
        assert len(summary.folds) == len(folds)
        assert summary.minimum <= summary.mean <= summary.maximum <= 100.0
        assert set(summary.per_category) == {"realAWSCloudwatch", "realAdExchange", "realTraffic"}
        for result in summary.folds:
            # A threshold learnt elsewhere can only do worse than the test files' own optimum.
            assert result.held_out <= result.held_out_own_threshold + 1e-9
            assert result.train_score <= 100.0
    # Leaving one category out, a category's pooled score is its fold's held-out score.
    loco = cross_validate(scored, leave_one_category_out(corpus), candidates=[0])
    for result in loco.folds:
        category = result.fold.name.removeprefix("category ")
        assert loco.per_category[category] == pytest.approx(result.held_out)


def test_anomaly_likelihood_follows_numenta() -> None:
    """Quiet stream, then a spike: the spike gets the top log score, and a second 'red' point
    in a row is lowered to 'yellow' (tail 1e-3), as nupic's likelihood filter does."""
    likelihood = AnomalyLikelihood(averaging=1)
    quiet = [likelihood.update(0.0) for _ in range(1000)]
    assert quiet[0] == pytest.approx(math.log(0.5 + 1e-10) / math.log(1e-10))
    first, second = likelihood.update(1.0), likelihood.update(1.0)
    assert first == pytest.approx(1.0, abs=1e-6)
    assert first > max(quiet)
    assert second == pytest.approx(math.log(1e-3 + 1e-10) / math.log(1e-10))


@pytest.mark.skipif(not (NAB_DIR / "labels").is_dir(), reason=f"NAB dev data not at {NAB_DIR}")
def test_cv_bench_runs_on_a_small_nab_directory(tmp_path: Path) -> None:
    """`bench/detector_cv.py` end to end on a copy of 4 short NAB files (its figures are not
    asserted, only that every split and strategy is reported)."""
    names = [
        "realAdExchange/exchange-2_cpm_results.csv",
        "realAdExchange/exchange-4_cpc_results.csv",
        "realTraffic/occupancy_6005.csv",
        "realTraffic/speed_t4013.csv",
    ]
    labels = json.loads((NAB_DIR / "labels" / "combined_windows_dev.json").read_text())
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows_dev.json").write_text(
        json.dumps({name: labels[name] for name in names})
    )
    for name in names:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB_DIR / "data" / name, tmp_path / "data" / name)
    run = subprocess.run(
        [
            sys.executable,
            "bench/detector_cv.py",
            "--grid-size",
            "2",
            "--tune",
            "alarm_level",
            "--k",
            "2",
            "--likelihood",
        ],
        cwd=REPO,
        env={**os.environ, "MEDKIT_NAB_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.count("held-out over folds: mean") == 2 * 5
    assert "leave one category out: shipped default" in out
    assert "stratified 2-fold, seed 0: ensemble" in out
    assert "pooled per category: realAdExchange" in out
