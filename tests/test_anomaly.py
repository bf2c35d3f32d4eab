"""Behaviour of the streaming anomaly detector and of `medkit detect-csv`."""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cli import detect_cmd
from cli import main as cli_main
from detectors.anomaly import AnomalyDetector, AnomalyDetectorConfig, SlidingExtremes, score_series
from detectors.nab_scoring import load_corpus

N = 4032  # 14 days of 5-minute points
DAY = 288
START = datetime(2024, 1, 1)
ALARM = AnomalyDetectorConfig().alarm_level
SETTLED = 604  # NAB's probationary period for N rows
NAB_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "nab"


def stamps(n: int = N) -> list[datetime]:
    return [START + timedelta(minutes=5 * i) for i in range(n)]


def seasonal(seed: int = 7) -> list[float]:
    """A clean daily sine (amplitude 10) with Gaussian noise of 0.5."""
    rng = random.Random(seed)
    return [50 + 10 * math.sin(2 * math.pi * i / DAY) + rng.gauss(0, 0.5) for i in range(N)]


def test_quiet_on_clean_seasonal_series() -> None:
    scores = score_series(stamps(), seasonal())
    assert max(scores[SETTLED:]) < ALARM


def test_learns_the_daily_season() -> None:
    detector = AnomalyDetector()
    for t, v in zip(stamps(), seasonal(), strict=True):
        detector.update(t, v)
    assert detector.period == DAY


def test_flags_spike_inside_the_seasonal_range() -> None:
    values = seasonal()
    values[3000] += 8  # well inside the sine's range, so only season removal reveals it
    scores = score_series(stamps(), values)
    assert scores[3000] >= ALARM
    assert scores[3000] > max(scores[SETTLED:3000])


def test_flags_level_shift_promptly() -> None:
    values = [v + (15 if i >= 3000 else 0) for i, v in enumerate(seasonal())]
    scores = score_series(stamps(), values)
    assert max(scores[3000:3003]) >= ALARM
    assert max(scores[SETTLED:3000]) < ALARM


def square_day(seed: int, change: str) -> list[float]:
    """A daily square wave (20 by night, 80 by day, uniform noise) whose day 10 changes: its high
    phase jumps up or down, or the whole day goes flat; the kinds of change NAB's artificial
    series hold, generated here rather than read from any of them."""
    rng = random.Random(seed)
    values = []
    for i in range(N):
        high = DAY * 3 // 8 <= i % DAY < DAY * 3 // 4
        value = (80.0 if high else 20.0) + rng.uniform(-2, 8)
        if 10 * DAY <= i < 11 * DAY:
            if change == "jumps up" and high:
                value += 60
            elif change == "jumps down" and high:
                value -= 40
            elif change == "goes flat":
                value = 50 + rng.uniform(-1, 1)
        values.append(value)
    return values


@pytest.mark.parametrize("change", ["jumps up", "jumps down", "goes flat"])
def test_a_day_whose_pattern_changes_alarms_within_that_day(change: str) -> None:
    for seed in range(3):
        scores = score_series(stamps(), square_day(seed, change))
        assert max(scores[SETTLED:10 * DAY]) < ALARM, (change, seed)
        assert max(scores[10 * DAY:11 * DAY]) >= ALARM, (change, seed)


def test_an_unchanging_square_wave_never_alarms() -> None:
    for seed in range(3):
        assert max(score_series(stamps(), square_day(seed, "none"))[SETTLED:]) < ALARM


def test_one_alarm_per_incident() -> None:
    values = [v + (15 if 3000 <= i < 3030 else 0) for i, v in enumerate(seasonal())]
    scores = score_series(stamps(), values)
    assert sum(s >= ALARM for s in scores[3000:3030]) == 1


def test_uses_only_the_past() -> None:
    values = seasonal()
    values[2500] += 30
    full = score_series(stamps(), values)
    for cut in (1, 300, 1999, 2001, 2501, 3500):
        assert score_series(stamps(cut), values[:cut]) == full[:cut]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-1e9, 1e9, allow_nan=False),
            st.sampled_from([0.0, 1.0, -1.0, 1e9, 1e-9]),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_scores_are_in_unit_interval(values: list[float]) -> None:
    config = AnomalyDetectorConfig(window=20, refit_every=100, max_period=10)
    scores = score_series(stamps(len(values)), values, config)
    assert len(scores) == len(values)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_score_series_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        score_series(stamps(3), [1.0, 2.0])


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    detect_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["detect-csv", *argv])
    result: int = args.func(args)
    return result


def test_detect_csv_writes_one_score_per_row(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    values = seasonal()[:500]
    rows = [f"{t.isoformat(sep=' ')},{v}" for t, v in zip(stamps(500), values, strict=True)]
    source.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.csv"
    assert run_cli(str(source), "-o", str(out)) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score"
    assert len(lines) == 501
    for line, row in zip(lines[1:], rows, strict=True):
        assert line.startswith(row + ",")
        assert 0.0 <= float(line.rsplit(",", 1)[1]) <= 1.0


def test_detect_csv_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.csv"
    source.write_text("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,2\n")
    assert run_cli(str(source)) == 0
    assert capsys.readouterr().out.splitlines()[0] == "timestamp,value,anomaly_score"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,abc\n", "row 3: bad value"),
        ("timestamp,value\nyesterday,1\n", "row 2: bad timestamp"),
        ("timestamp,value\n2024-01-01 00:00:00,1,9\n", "row 2: expected 2 fields"),
        ("time,v\n2024-01-01 00:00:00,1\n", "row 1: expected header"),
        ("timestamp,value\n1704067200,1\n", "row 2: bad timestamp '1704067200': expected ISO 8601"),
        ("timestamp,value,host\n2024-01-01 00:00:00,1,a\n",
         "row 1: expected header 'timestamp,value' (exactly two columns), got 'timestamp,value,host'"),
        ("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01T00:05:00+00:00,2\n",
         "row 3: timestamp '2024-01-01T00:05:00+00:00' has a UTC offset, unlike row 2's"),
        ("timestamp,value\n2024-01-01T00:00:00Z,1\n2024-01-01 00:05:00,2\n",
         "row 3: timestamp '2024-01-01 00:05:00' has no UTC offset, unlike row 2's"),
        ("timestamp,value\n\n \n2024-01-01 00:00:00,1\n\n2024-01-01T00:05:00Z,2\n",
         "row 6: timestamp '2024-01-01T00:05:00Z' has a UTC offset, unlike row 4's;"),
        (b"timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,\xff\n",
         "row 3: not UTF-8 text (byte 0xff)"),
    ],
)
def test_detect_csv_rejects_malformed_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, expected: str
) -> None:
    source = tmp_path / "bad.csv"
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert run_cli(str(source)) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1


def test_detect_csv_skips_a_row_that_goes_back_in_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row earlier than the one before it is skipped with one warning; the rest is scored
    exactly as if that row had never been in the file."""
    rows = [f"{t.isoformat(sep=' ')},{v}" for t, v in zip(stamps(300), noise()[:300], strict=True)]
    stray = "2023-12-31 23:00:00,999"
    source = tmp_path / "in.csv"
    source.write_text("timestamp,value\n" + "\n".join([*rows[:100], stray, *rows[100:]]) + "\n")
    clean = tmp_path / "clean.csv"
    clean.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    out, expected = tmp_path / "out.csv", tmp_path / "expected.csv"
    assert run_cli(str(source), "-o", str(out)) == 0
    warning, summary = capsys.readouterr().err.splitlines()
    assert "warning" in warning and "row 102" in warning and "goes back in time" in warning
    assert summary == "medkit detect-csv: 1 row skipped, 300 scored"
    assert run_cli(str(clean), "-o", str(expected)) == 0
    assert capsys.readouterr().err == ""
    assert out.read_text() == expected.read_text()


def test_detect_csv_skips_a_repeated_timestamp_as_the_live_loop_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live loop scores only a point after the last one, so a repeat is skipped here too."""
    source = tmp_path / "in.csv"
    source.write_text("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:00:00,2\n"
                      "2024-01-01 00:05:00,3\n")
    assert run_cli(str(source)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == ["2024-01-01 00:00:00,1,0.000000",
                                             "2024-01-01 00:05:00,3,0.000000"]
    warning, summary = captured.err.splitlines()
    assert "row 3: timestamp 2024-01-01 00:00:00 repeats" in warning and "row skipped" in warning
    assert summary == "medkit detect-csv: 1 row skipped, 2 scored"


def test_detect_csv_ignores_blank_lines_and_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spreadsheets save a BOM and editors leave blank lines; neither changes a score."""
    rows = [f"{t.isoformat(sep=' ')},{v}" for t, v in zip(stamps(50), noise()[:50], strict=True)]
    clean, messy = tmp_path / "clean.csv", tmp_path / "messy.csv"
    clean.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    messy.write_bytes(("\ufefftimestamp,value\n\n" + "\n".join(rows[:20]) + "\n\n \n"
                       + "\r\n".join(rows[20:]) + "\n\n\n").encode())
    assert run_cli(str(clean)) == 0
    expected = capsys.readouterr().out
    assert run_cli(str(messy)) == 0
    captured = capsys.readouterr()
    assert captured.out == expected and captured.err == ""


def test_detect_csv_stops_quietly_when_the_reader_goes_away(tmp_path: Path) -> None:
    """`medkit detect-csv big.csv | head` must end like a Unix tool: no traceback."""
    source = tmp_path / "big.csv"
    rows = (f"{t.isoformat(sep=' ')},{i % 7}" for i, t in enumerate(stamps(30_000)))
    source.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    medkit = Path(sys.executable).parent / "medkit"
    with subprocess.Popen([str(medkit), "detect-csv", str(source)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"timestamp,value,anomaly_score\n"
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait()
    assert err == b""
    assert code == cli_main.EXIT_BROKEN_PIPE


def test_detect_csv_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(tmp_path / "nope.csv")) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err
    assert err.count("\n") == 1


@pytest.mark.skipif(not (NAB_DIR / "labels").is_dir(), reason=f"NAB dev data not at {NAB_DIR}")
def test_scores_a_slice_of_nab() -> None:
    corpus = [s for s in load_corpus(NAB_DIR) if s.name.startswith("realTraffic/")]
    assert corpus
    for series in corpus[:2]:
        scores = score_series(series.timestamps, series.values)
        assert len(scores) == len(series.values)
        assert all(0.0 <= s <= 1.0 for s in scores)


def noise(seed: int = 3) -> list[float]:
    """Gaussian noise of 1 around 50, without season."""
    rng = random.Random(seed)
    return [50 + rng.gauss(0, 1) for _ in range(N)]


def test_recurring_spike_is_not_new_after_its_first_occurrence() -> None:
    values = noise()
    values[1000] += 15
    for i in range(1250, N, 250):
        values[i] += 12  # as rare for a Gaussian, but no longer new
    scores = score_series(stamps(), values)
    assert scores[1000] >= ALARM
    assert max(scores[1300:]) < ALARM


def test_small_sustained_shift_is_caught_by_the_level_scale() -> None:
    values = [v + (2.5 if i >= 3000 else 0) for i, v in enumerate(noise())]
    scores = score_series(stamps(), values)
    assert max(scores[3000:3040]) >= ALARM
    points_only = score_series(stamps(), values, AnomalyDetectorConfig(smooth=0, slow=0))
    assert max(points_only[3000:3040]) < ALARM


def test_a_shift_too_small_for_the_level_is_caught_by_the_slow_scale() -> None:
    values = [v + (0.8 if i >= 3000 else 0) for i, v in enumerate(noise())]
    scores = score_series(stamps(), values)
    assert max(scores[3000:3200]) >= ALARM
    without_slow = score_series(stamps(), values, AnomalyDetectorConfig(slow=0))
    assert max(without_slow[3000:3200]) < ALARM


def test_a_metric_that_stops_moving_is_caught_by_the_volatility_of_the_slow_scale() -> None:
    values = [v if i < 3000 else 50.0 for i, v in enumerate(noise())]  # a stuck exporter
    scores = score_series(stamps(), values)
    assert max(scores[3000:3100]) >= ALARM
    without_slow = score_series(stamps(), values, AnomalyDetectorConfig(slow=0))
    assert max(without_slow[3000:]) < ALARM


def test_the_slow_scale_raises_no_false_alarm_while_it_warms_up() -> None:
    """Its overlapping means need a full window before their spread is trusted: without that
    wait, 16 of these 40 noise series alarmed between points 102 and 385. (Seed 37's point 62 is
    a 3.9-sigma draw that the point scale rightly scores 0.52; the slow scale starts at 100.)"""
    for seed in range(40):
        scores = score_series(stamps(1500), noise(seed)[:1500])
        assert max(scores[100:]) < ALARM, seed


def test_a_new_series_raises_no_false_alarm_on_its_first_points() -> None:
    """A spread measured on two or three points is no spread: scoring from the second point,
    69 of these 200 N(100, 5) series alarmed within 60 points, almost all at the second."""
    config = AnomalyDetectorConfig()
    for seed in range(200):
        rng = random.Random(seed)
        scores = score_series(stamps(60), [100 + rng.gauss(0, 5) for _ in range(60)])
        assert scores[: config.min_history] == [0.0] * config.min_history, seed
        assert max(scores) < ALARM, seed


def test_a_short_window_scores_once_it_is_full() -> None:
    """`min_history` beyond `window` would never be reached: the window's length is enough."""
    config = AnomalyDetectorConfig(window=10, min_history=30)
    scores = score_series(stamps(40), [float(i % 3) for i in range(39)] + [50.0], config)
    assert scores[:10] == [0.0] * 10
    assert scores[-1] > ALARM


def test_the_config_refuses_unknown_fields() -> None:
    """A misspelt setting would otherwise be ignored silently and the default used."""
    with pytest.raises(ValidationError, match="windw"):
        AnomalyDetectorConfig.model_validate({"windw": 50})


def spikes_every(period: int, start: int, stop: int, values: list[float]) -> None:
    """Alternate +10 and -10 spikes every ``period`` points: the level of any whole number of
    periods stays at the baseline, and no spike is higher than the ones before."""
    for i in range(start, stop, period):
        values[i] += 10 if (i // period) % 2 == 0 else -10


def test_denser_spikes_are_caught_by_the_volatility_of_the_slow_scale() -> None:
    values = [50.0] * N
    spikes_every(50, 0, 3000, values)
    spikes_every(5, 3000, N, values)
    scores = score_series(stamps(), values)
    assert max(scores[SETTLED:3000]) < ALARM
    assert max(scores[3000:3100]) >= ALARM
    without_slow = score_series(stamps(), values, AnomalyDetectorConfig(slow=0))
    assert max(without_slow[3000:]) < ALARM


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=200), st.integers(1, 20))
def test_sliding_extremes_match_brute_force(values: list[int], size: int) -> None:
    extremes = SlidingExtremes(size)
    for i, value in enumerate(values):
        past = values[max(0, i - size) : i]
        assert extremes.is_new_extreme(value, True) == (bool(past) and value > max(past))
        assert extremes.is_new_extreme(value, False) == (bool(past) and value < min(past))
        extremes.push(value)


@pytest.mark.parametrize("extreme", [1.7e308, -1.7e308, math.inf, -math.inf])
def test_one_absurd_value_does_not_blind_the_detector(extreme: float) -> None:
    """A single ±1.7e308 (or infinite) value once drove the running sums to inf/NaN, or crashed
    the seasonality refit, for good. It is clamped, scored as the anomaly it is, and once it has
    left the window and the novelty range an ordinary spike fires again."""
    rng = random.Random(5)
    values = [50 + rng.gauss(0, 1) for _ in range(6000)]
    values[1000] = extreme
    values[5200] += 15  # 15 standard deviations: the same spike fires on a clean series
    detector = AnomalyDetector()
    scores = [detector.update(t, v) for t, v in zip(stamps(6000), values, strict=True)]
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
    assert scores[1000] >= ALARM
    assert scores[5200] >= ALARM
    assert max(scores[5201:]) < ALARM


def test_nan_is_refused_and_changes_nothing() -> None:
    points = list(zip(stamps(300), noise()[:300], strict=True))
    seen, clean = AnomalyDetector(), AnomalyDetector()
    for t, v in points[:150]:
        seen.update(t, v)
        clean.update(t, v)
    with pytest.raises(ValueError, match="NaN"):
        seen.update(points[150][0], math.nan)
    assert [seen.update(t, v) for t, v in points[150:]] == [clean.update(t, v) for t, v in points[150:]]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-1e9, 1e9, allow_nan=False),
            st.sampled_from([1.7e308, -1.7e308, math.inf, -math.inf, 1e200, -1e-300]),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_scores_stay_finite_whatever_the_magnitudes(values: list[float]) -> None:
    config = AnomalyDetectorConfig(window=20, refit_every=100, max_period=10)
    scores = score_series(stamps(len(values)), values, config)
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
