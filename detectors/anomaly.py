"""Streaming statistical anomaly detector for metric series.

Licence: medkit is MIT. No code translated or derived from AGPL sources (NAB's CAD OSE,
ARTime/ARTimeNAB.jl, nupic's anomaly likelihood) may enter this module or anything medkit
ships; such detectors may only be measured outside the repository.

Each point is scored with only the past, in amortised O(1) per point:

1. **Baseline (seasonality).** Every ``refit_every`` points, statsmodels' classical
   ``seasonal_decompose`` on the recent history measures the strength of a daily and a weekly
   season, ``1 - Var(residual) / Var(seasonal + residual)``; the strongest one above
   ``min_strength`` is removed from each new value using a per-phase profile that is then
   kept up to date by exponential smoothing. The refit is the only non-O(1) step (amortised).
2. **Deviation, on three time scales.** The deseasonalised value, the mean of the last
   ``smooth`` deseasonalised values (a level that reveals shifts a single point hides), and on
   the slow scale of ``slow`` points both their mean (slow drifts) and their mean absolute change
   from one point to the next (volatility: noise or spikes growing denser, or a metric that
   stops moving, which no level shows) are each compared with the mean and standard deviation
   of their own last ``window`` values (running sums in a ring buffer), giving a two-sided
   Gaussian surprise ``s = -log10(q)``.
3. **Novelty gate.** A time scale only counts when its value is a new extreme on its side of
   the mean: above every one of its last ``novelty_window`` values, or below every one. A spike
   that recurs daily, or noise in a heavy-tailed series, is rare for a Gaussian but not new;
   a real incident usually is. The extremes are sliding maxima and minima (monotonic deques,
   amortised O(1)). The score is ``s / (s + 5)`` of the largest surviving surprise: it lies in
   [0, 1), is 0.5 at ``q = 1e-5`` and never saturates, so extreme points stay ranked above rare
   ones.
4. **Adaptive alarm.** A score above ``alarm_level`` opens a refractory period of
   ``refractory`` points during which scores are damped: one incident gives one alarm, not a
   burst of false positives (each of which would trigger a needless remediation).

Why: this combination scored best on the NAB development data among the candidates measured
by ``bench/detector.py`` (see docs/anomaly-detector.md), and ``update`` costs a few plain float
operations, which keeps it cheap and dependency-light for live series.

**Finite state.** Values beyond ``MAX_MAGNITUDE`` (``±inf`` included) are clamped to it, so the
running sums of squares cannot overflow; and when a value that dominates a window's sums leaves
it, the sums are recomputed exactly instead of subtracted, because subtracting it would cancel
catastrophically and leave the sums wrong for good. An extreme value is scored like any spike
and, like any spike, widens the window's spread until it leaves (``window`` points) and sets the
novelty bar on its side for ``novelty_window`` points; after that the detector scores as if it
had never seen it. NaN is refused (``ValueError``): it has no place to be clamped to.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

_SECONDS_PER_DAY = 86400.0
_HALF_SURPRISE = 5.0
_SQRT2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_LN10 = math.log(10.0)
_LOG10_2 = math.log10(2.0)

MAX_MAGNITUDE = 1e100
"""Largest magnitude a value is scored and learned at; larger ones are clamped to it. No real
metric comes near it, and a window's sum of squares stays finite (1000 x 1e200)."""


MIN_HISTORY = 30
"""Default number of values a time scale needs before it scores. Measured on 200 seeded N(100, 5)
series of 300 points: 69 alarm (score > 0.5) when scoring starts at 2 values, almost all at the
second point; 4 at 10, 2 at 20, 1 at 30 (its first alarm at point 62, where a longer minimum
changes nothing). NAB's figures are unchanged (see docs/anomaly-detector.md)."""


class AnomalyDetectorConfig(BaseModel):
    """Settings of `AnomalyDetector`; the defaults are the ones measured on NAB."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(
        1000, ge=10, description="Past points whose mean and spread define 'normal'."
    )
    smooth: int = Field(
        20,
        ge=0,
        description="Points averaged for the level time scale, which catches shifts and drifts"
        " (0 or 1: points only).",
    )
    slow: int = Field(
        100,
        ge=0,
        description="Points of the slow time scale (0 or 1: none): their mean reveals slow"
        " drifts, and their mean absolute change from one point to the next reveals a change of"
        " noise or of spike rate that no single point or level shows.",
    )
    novelty_window: int = Field(
        4000,
        ge=0,
        description="Past values a time scale must exceed (or undercut) to be scored: only new"
        " extremes raise alarms (0: no gate).",
    )
    min_history: int = Field(
        MIN_HISTORY,
        ge=2,
        description="Values a time scale must hold before it scores (or all of `window`, if"
        " shorter): a spread measured on fewer is too noisy, and a new series would alarm on its"
        " first points.",
    )
    seasonal: bool = Field(True, description="Remove a daily/weekly season when one is detected.")
    season_gamma: float = Field(0.1, gt=0, le=1, description="Smoothing of the seasonal profile.")
    refractory: int = Field(
        200,
        ge=0,
        description="Points after an alarm during which scores are damped, so one incident"
        " raises one alarm instead of a burst of false positives.",
    )
    alarm_level: float = Field(
        0.5, gt=0, lt=1, description="Score that opens a refractory period (surprise 5)."
    )
    damping: float = Field(0.5, ge=0, le=1, description="Factor applied to damped scores.")
    refit_every: int = Field(
        2000, ge=100, description="Points between two seasonality checks (amortised cost)."
    )
    max_period: int = Field(1000, ge=2, description="Longest season, in points, considered.")
    min_strength: float = Field(
        0.5, ge=0, le=1, description="Seasonal strength needed to model a season."
    )


def gaussian_tail(z: float) -> float:
    """Probability that a standard normal variable exceeds ``z`` (the Q-function)."""
    return 0.5 * math.erfc(z / _SQRT2)


def tail_surprise(z: float) -> float:
    """``-log10`` of the Gaussian tail probability beyond ``z``, stable for very large ``z``."""
    if z <= 0.0:
        return -math.log10(0.5)
    if z < 30.0:
        return -math.log10(gaussian_tail(z))
    return (0.5 * z * z + math.log(z * _SQRT_2PI)) / _LN10


def surprise_to_score(surprise: float) -> float:
    """Map a surprise ``s = -log10(q)`` to [0, 1) as ``s / (s + 5)``: 0.5 means ``q = 1e-5``.

    The map never saturates, so the most extreme points stay ordered above the merely rare ones
    (a saturated score would tie them, and one threshold could no longer separate them).
    """
    return surprise / (surprise + _HALF_SURPRISE) if surprise > 0.0 else 0.0


def seasonal_strength(values: Sequence[float], period: int) -> float:
    """Strength of a season of ``period`` points in ``values``, in [0, 1] (0 = none).

    Uses statsmodels' classical decomposition; needs at least two full periods.
    """
    import numpy as np
    from statsmodels.tsa.seasonal import (  # type: ignore[import-untyped]
        seasonal_decompose,
    )

    if period < 2 or len(values) < 2 * period + 1:
        return 0.0
    decomposition = seasonal_decompose(
        np.asarray(values, dtype=float), period=period, extrapolate_trend="period"
    )
    resid = np.asarray(decomposition.resid, dtype=float)
    seasonal = np.asarray(decomposition.seasonal, dtype=float)
    total = float(np.var(seasonal + resid))
    if total <= 0.0:
        return 0.0
    return max(0.0, 1.0 - float(np.var(resid)) / total)


def seasonal_profile(values: Sequence[float], phases: Sequence[int], period: int) -> list[float]:
    """Mean deviation from the series mean at each phase of the season (initial profile)."""
    sums = [0.0] * period
    counts = [0] * period
    mean = sum(values) / len(values)
    for value, phase in zip(values, phases, strict=True):
        sums[phase] += value - mean
        counts[phase] += 1
    return [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]


class SlidingExtremes:
    """Maximum and minimum of the last ``size`` values pushed (monotonic deques, amortised O(1))."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._count = 0
        self._max: deque[tuple[int, float]] = deque()
        self._min: deque[tuple[int, float]] = deque()

    def is_new_extreme(self, value: float, upwards: bool) -> bool:
        """Whether ``value`` is above every value in the window (``upwards``) or below every one.

        An empty window has no extremes, so nothing is new before the first value.
        """
        if upwards:
            return bool(self._max) and value > self._max[0][1]
        return bool(self._min) and value < self._min[0][1]

    def push(self, value: float) -> None:
        """Add a value, forgetting the one that falls out of the window."""
        index = self._count
        self._count += 1
        while self._max and self._max[-1][1] <= value:
            self._max.pop()
        self._max.append((index, value))
        while self._min and self._min[-1][1] >= value:
            self._min.pop()
        self._min.append((index, value))
        oldest = index - self.size
        if self._max[0][0] <= oldest:
            self._max.popleft()
        if self._min[0][0] <= oldest:
            self._min.popleft()


class RunningMean:
    """Mean of the last ``size`` values pushed (a running sum over a ring buffer).

    When the value leaving holds more than half of the sum, the sum is recomputed from the
    window instead of subtracted, for the reason `DeviationChannel.push` gives.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: deque[float] = deque()
        self._sum = 0.0

    @property
    def full(self) -> bool:
        """Whether the window holds ``size`` values."""
        return len(self._values) >= self.size

    def mean_with(self, value: float) -> float:
        """The mean the window would have after pushing ``value`` (nothing is pushed)."""
        count = len(self._values)
        total = self._sum + value
        if count == self.size:
            total -= self._values[0]
        else:
            count += 1
        return total / count

    def push(self, value: float) -> float:
        """Add a value, dropping the oldest one when the window is full; the new mean."""
        self._values.append(value)
        before = self._sum + value
        self._sum = before
        if len(self._values) > self.size:
            old = self._values.popleft()
            if abs(old) > 0.5 * abs(before):
                self._sum = math.fsum(self._values)
            else:
                self._sum -= old
        return self._sum / len(self._values)


class DeviationChannel:
    """One time scale: Gaussian surprise of a value against its recent past, gated by novelty.

    Keeps the mean and spread of the last ``window`` values (running sums in a ring buffer) and,
    when ``novelty_window`` is positive, their extremes over that many values. It scores nothing
    until it holds ``min_count`` values (at most ``window``, at least 2).
    """

    def __init__(self, window: int, novelty_window: int, min_count: int = 2) -> None:
        self.window = window
        self.min_count = max(2, min(min_count, window))
        self._values: deque[float] = deque()
        self._sum = 0.0
        self._sq = 0.0
        self._abs_sum = 0.0
        self._extremes = SlidingExtremes(novelty_window) if novelty_window else None

    @property
    def count(self) -> int:
        """Values in the window."""
        return len(self._values)

    @property
    def last(self) -> float | None:
        """The value pushed last (None when empty)."""
        return self._values[-1] if self._values else None

    @property
    def mean(self) -> float:
        """Mean of the window (0 when empty)."""
        return self._sum / len(self._values) if self._values else 0.0

    def surprise(self, value: float) -> float:
        """``-log10`` of the two-sided Gaussian tail of ``value``; 0 unless it is a new extreme.

        The spread has a floor of ``1e-3`` times the window's mean absolute value, plus ``1e-9``,
        so a constant window does not divide by zero; after an all-zero window the floor is
        ``1e-9``, and any non-zero value is an extreme surprise (it is new: the metric moved).
        """
        count = len(self._values)
        if count < self.min_count:
            return 0.0
        mean = self._sum / count
        if self._extremes is not None and not self._extremes.is_new_extreme(
            value, value > mean
        ):
            return 0.0
        var = self._sq / count - mean * mean
        floor = 1e-3 * self._abs_sum / count + 1e-9
        std = math.sqrt(var) if var > floor * floor else floor
        return tail_surprise(abs(value - mean) / std) - _LOG10_2

    def push(self, value: float) -> None:
        """Add a value, dropping the oldest one when the window is full.

        When the value dropped holds more than half of the window's sum of squares, the sums
        are recomputed from the window: subtracting a value that dominates them would leave
        mostly rounding error (a 1e100 spike absorbs every ordinary value added after it).
        That happens only when an outlier leaves, so the cost stays amortised O(1).
        """
        self._values.append(value)
        self._sum += value
        self._sq += value * value
        self._abs_sum += abs(value)
        if len(self._values) > self.window:
            old = self._values.popleft()
            if old * old > 0.5 * self._sq:
                self._recount()
            else:
                self._sum -= old
                self._sq -= old * old
                self._abs_sum -= abs(old)
        if self._extremes is not None:
            self._extremes.push(value)

    def _recount(self) -> None:
        """The window's sums, recomputed exactly from its values."""
        self._sum = math.fsum(self._values)
        self._sq = math.fsum(v * v for v in self._values)
        self._abs_sum = math.fsum(abs(v) for v in self._values)


class AnomalyDetector:
    """Scores each new point of one metric series in [0, 1], using only the points before it.

    Call `update` once per point, in time order. The state is a few floats and bounded ring
    buffers: memory is O(window + seasonal history), time amortised O(1) per point.
    """

    def __init__(self, config: AnomalyDetectorConfig | None = None) -> None:
        cfg = config or AnomalyDetectorConfig()
        self.config = cfg
        self._n = 0
        self._start: datetime | None = None
        self._step = 0.0
        self._gaps: list[float] = []
        self._last_seconds = 0.0
        history = max(2 * cfg.max_period + 1, cfg.window)
        self._history: deque[float] = deque(maxlen=history)
        self._ticks: deque[int] = deque(maxlen=history)
        self._next_refit = cfg.refit_every
        self._period = 0
        self._season: list[float] = []
        self._reset_channels()
        self._last_alarm = -cfg.refractory - 1

    @property
    def period(self) -> int:
        """The season length in points currently removed (0 when none)."""
        return self._period

    def update(self, timestamp: datetime, value: float) -> float:
        """Score ``value`` observed at ``timestamp`` against the past, then learn from it.

        Values beyond ``MAX_MAGNITUDE`` are clamped to it; NaN raises ValueError and changes nothing.
        """
        if math.isnan(value):
            raise ValueError("cannot score NaN: a value must be a number")
        value = min(max(value, -MAX_MAGNITUDE), MAX_MAGNITUDE)
        cfg = self.config
        tick = self._tick(timestamp)
        phase = tick % self._period if self._period else 0
        season = self._season[phase] if self._period else 0.0
        adjusted = value - season
        score = surprise_to_score(self._surprise(adjusted))
        if self._n - self._last_alarm <= cfg.refractory:
            score *= cfg.damping
        elif score >= cfg.alarm_level:
            self._last_alarm = self._n
        if self._period:
            self._season[phase] += cfg.season_gamma * (value - self._point.mean - season)
        self._push(adjusted)
        self._n += 1
        if cfg.seasonal and self._step > 0.0:
            self._history.append(value)
            self._ticks.append(tick)
            if self._n >= self._next_refit:
                self._refit()
        return score

    def _tick(self, timestamp: datetime) -> int:
        """Index of the sampling step of ``timestamp``; learns the step from the first gaps."""
        if self._start is None:
            self._start = timestamp
            return 0
        seconds = (timestamp - self._start).total_seconds()
        if len(self._gaps) < 25:
            gap = seconds - self._last_seconds
            if gap > 0:
                self._gaps.append(gap)
                self._step = sorted(self._gaps)[len(self._gaps) // 2]
        self._last_seconds = seconds
        return round(seconds / self._step) if self._step > 0.0 else self._n

    def _reset_channels(self) -> None:
        """Forget the past of every time scale (at start, and when the season changes)."""
        cfg = self.config
        self._point = DeviationChannel(cfg.window, cfg.novelty_window, cfg.min_history)
        self._level = DeviationChannel(cfg.window, cfg.novelty_window, cfg.min_history)
        self._recent = RunningMean(cfg.smooth)
        self._slow_level = DeviationChannel(cfg.window, cfg.novelty_window)
        self._volatility = DeviationChannel(cfg.window, cfg.novelty_window)
        self._slow_mean = RunningMean(cfg.slow)
        self._slow_change = RunningMean(cfg.slow)

    def _surprise(self, adjusted: float) -> float:
        """Largest surprise of the time scales for a new deseasonalised value.

        The slow scale only counts once each of its channels holds ``window`` values: its
        values overlap (each shares all but one point with the next), so a spread measured on
        fewer is too narrow, and a series' first hours would raise false alarms.
        """
        surprise = self._point.surprise(adjusted)
        if self.config.smooth > 1:
            surprise = max(surprise, self._level.surprise(self._recent.mean_with(adjusted)))
        if self.config.slow > 1:
            window = self.config.window
            if self._slow_level.count >= window:
                mean = self._slow_mean.mean_with(adjusted)
                surprise = max(surprise, self._slow_level.surprise(mean))
            previous = self._point.last
            if self._volatility.count >= window and previous is not None:
                change = self._slow_change.mean_with(abs(adjusted - previous))
                surprise = max(surprise, self._volatility.surprise(change))
        return surprise

    def _push(self, adjusted: float) -> None:
        """Learn a deseasonalised value on every time scale."""
        previous = self._point.last
        self._point.push(adjusted)
        cfg = self.config
        if cfg.smooth > 1:
            self._level.push(self._recent.push(adjusted))
        if cfg.slow > 1:
            slow_mean = self._slow_mean.push(adjusted)
            if self._slow_mean.full:
                self._slow_level.push(slow_mean)
            if previous is not None:
                change = self._slow_change.push(abs(adjusted - previous))
                if self._slow_change.full:
                    self._volatility.push(change)

    def _refit(self) -> None:
        """Re-decide the season from the recent history (amortised: every ``refit_every``)."""
        cfg = self.config
        self._next_refit = self._n + cfg.refit_every
        best_period, best_strength = 0, cfg.min_strength
        values = list(self._history)
        for days in (1.0, 7.0):
            period = round(days * _SECONDS_PER_DAY / self._step)
            if period > cfg.max_period or len(values) < 2 * period + 1:
                continue
            strength = seasonal_strength(values, period)
            if strength >= best_strength:
                best_period, best_strength = period, strength
        if best_period == self._period:
            return
        self._period = best_period
        phases = [t % best_period for t in self._ticks] if best_period else []
        self._season = seasonal_profile(values, phases, best_period) if best_period else []
        self._reset_channels()
        for value, phase in zip(values, phases or [0] * len(values), strict=True):
            self._push(value - (self._season[phase] if best_period else 0.0))


def score_series(
    timestamps: Sequence[datetime],
    values: Sequence[float],
    config: AnomalyDetectorConfig | None = None,
) -> list[float]:
    """Score a whole series point by point, exactly as a live `AnomalyDetector` would."""
    if len(timestamps) != len(values):
        raise ValueError("timestamps and values differ in length")
    detector = AnomalyDetector(config)
    return [detector.update(t, float(v)) for t, v in zip(timestamps, values, strict=True)]
