"""Streaming statistical anomaly detector for metric series.

Each point is scored with only the past, in amortised O(1):

1. **Baseline.** An online additive Holt-Winters-style model (a level plus, when the series has
   one, a daily or weekly seasonal profile) predicts the next value. Whether a season exists, and
   its length, is decided periodically with statsmodels' classical ``seasonal_decompose`` on
   the recent history (amortised cost), using the strength of seasonality
   ``1 - Var(residual) / Var(seasonal + residual)``.
2. **Robust deviation.** The prediction error is divided by an exponentially weighted mean
   absolute error that is updated with winsorised errors, so one spike does not hide the next.
3. **Adaptive threshold.** The short-term mean of those deviations is compared with its own
   long-run distribution (as in Numenta's anomaly likelihood); the Gaussian tail probability
   ``q`` is mapped to ``-log10(q) / 10`` in [0, 1], so a score of 0.5 means ``q = 1e-5``.

Why: this combination scored best on the NAB development data among the candidates measured in
``bench/detector.py`` (see docs/anomaly-detector.md), at a per-point cost of a few plain float
operations, which keeps ``update`` cheap enough for live series.
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
_MIN_STD = math.sqrt(0.0003)
_MAD_TO_SIGMA_SQRT2 = 1.25 * _SQRT2


class AnomalyDetectorConfig(BaseModel):
    """Settings of `AnomalyDetector`; the defaults are the ones measured on NAB."""

    model_config = ConfigDict(frozen=True)

    seasonal: bool = Field(True, description="Model a daily/weekly season when one is detected.")
    likelihood: bool = Field(
        True,
        description="Score the short-term deviation against its own history (adaptive threshold)"
        " instead of the raw Gaussian tail of the latest deviation.",
    )
    level_alpha: float = Field(0.05, gt=0, le=1, description="Smoothing of the level.")
    season_gamma: float = Field(0.1, gt=0, le=1, description="Smoothing of the seasonal profile.")
    scale_beta: float = Field(0.01, gt=0, le=1, description="Smoothing of the error scale.")
    short_window: int = Field(5, ge=1, description="Points averaged into the short-term deviation.")
    long_window: int = Field(
        2000, ge=10, description="Points of deviation history the adaptive threshold learns from."
    )
    warmup: int = Field(
        150, ge=1, description="Points before any non-zero score (the baseline needs history)."
    )
    refit_every: int = Field(
        2000, ge=100, description="Points between two seasonality checks (amortised cost)."
    )
    max_period: int = Field(
        1000, ge=2, description="Longest season, in points, that is considered."
    )
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


class AnomalyDetector:
    """Scores each new point of one metric series in [0, 1], using only the points before it.

    Call `update` once per point, in time order. The state is a handful of floats plus bounded
    ring buffers, so memory is O(long_window + seasonal history).
    """

    def __init__(self, config: AnomalyDetectorConfig | None = None) -> None:
        cfg = config or AnomalyDetectorConfig()
        self.config = cfg
        self._n = 0
        self._start: datetime | None = None
        self._step = 0.0
        self._gaps: list[float] = []
        self._last_seconds = 0.0
        history = max(2 * cfg.max_period + 1, cfg.refit_every)
        self._history: deque[float] = deque(maxlen=history)
        self._phases: deque[int] = deque(maxlen=history)
        self._next_refit = cfg.warmup
        self._period = 0
        self._season: list[float] = []
        self._level = 0.0
        self._scale = 0.0
        self._magnitude = 0.0
        self._resolution = 0.0
        self._last_value = 0.0
        self._short: deque[float] = deque(maxlen=cfg.short_window)
        self._short_sum = 0.0
        self._long: deque[float] = deque(maxlen=cfg.long_window)
        self._long_sum = 0.0
        self._long_sq = 0.0

    @property
    def period(self) -> int:
        """The season length in points currently modelled (0 when none)."""
        return self._period

    def update(self, timestamp: datetime, value: float) -> float:
        """Score ``value`` observed at ``timestamp`` against the past, then learn from it."""
        cfg = self.config
        seconds = self._seconds(timestamp)
        phase = int(seconds / self._step) % self._period if self._period else 0
        if self._n == 0:
            self._level = value
            self._magnitude = abs(value)
            self._last_value = value
        season = self._season[phase] if self._period else 0.0
        error = value - self._level - season
        floor = 1e-3 * self._magnitude + self._resolution + 1e-12
        scale = self._scale if self._scale > floor else floor
        deviation = abs(error) / scale
        score = self._score(deviation) if self._n >= cfg.warmup else 0.0
        if self._n < cfg.warmup:
            self._observe(math.erf(deviation / _MAD_TO_SIGMA_SQRT2))
        self._learn(value, error, season, phase, scale)
        self._n += 1
        if cfg.seasonal and self._step > 0.0:
            self._history.append(value)
            self._phases.append(int(seconds / self._step))
            if self._n >= self._next_refit:
                self._refit()
        return score

    def _seconds(self, timestamp: datetime) -> float:
        """Seconds since the first point; also learns the sampling step from the first gaps."""
        if self._start is None:
            self._start = timestamp
            return 0.0
        seconds = (timestamp - self._start).total_seconds()
        if len(self._gaps) < 25:
            gap = seconds - self._last_seconds
            if gap > 0:
                self._gaps.append(gap)
                self._step = sorted(self._gaps)[len(self._gaps) // 2]
        self._last_seconds = seconds
        return seconds

    def _score(self, deviation: float) -> float:
        """Score the newest deviation; only this step reads the adaptive threshold state."""
        raw = math.erf(deviation / _MAD_TO_SIGMA_SQRT2)
        if not self.config.likelihood:
            return raw
        average = self._observe(raw)
        count = len(self._long)
        if count < 2:
            return 0.0
        mean = self._long_sum / count
        var = self._long_sq / count - mean * mean
        std = math.sqrt(var) if var > _MIN_STD * _MIN_STD else _MIN_STD
        return surprise_to_score(tail_surprise((average - mean) / std))

    def _observe(self, deviation: float) -> float:
        """Push a deviation into the short and long windows; returns the new short-term mean."""
        if len(self._short) == self._short.maxlen:
            self._short_sum -= self._short[0]
        self._short.append(deviation)
        self._short_sum += deviation
        average = self._short_sum / len(self._short)
        if len(self._long) == self._long.maxlen:
            old = self._long[0]
            self._long_sum -= old
            self._long_sq -= old * old
        self._long.append(average)
        self._long_sum += average
        self._long_sq += average * average
        return average

    def _learn(self, value: float, error: float, season: float, phase: int, scale: float) -> None:
        """Update level, seasonal profile, error scale and magnitude with the new point."""
        cfg = self.config
        limit = 5.0 * scale
        clipped = error if -limit <= error <= limit else math.copysign(limit, error)
        self._scale += cfg.scale_beta * (abs(clipped) - self._scale)
        self._magnitude += cfg.scale_beta * (abs(value) - self._magnitude)
        step = abs(value - self._last_value)
        if step > 0.0 and (step < self._resolution or self._resolution == 0.0):
            self._resolution = step
        self._last_value = value
        self._level += cfg.level_alpha * (value - season - self._level)
        if self._period:
            self._season[phase] += cfg.season_gamma * (value - self._level - season)

    def _refit(self) -> None:
        """Re-decide the season from the recent history (amortised: every ``refit_every``)."""
        cfg = self.config
        self._next_refit = self._n + cfg.refit_every
        best_period, best_strength = 0, cfg.min_strength
        for days in (1.0, 7.0):
            period = round(days * _SECONDS_PER_DAY / self._step)
            if period > cfg.max_period or len(self._history) < 2 * period + 1:
                continue
            strength = seasonal_strength(list(self._history), period)
            if strength >= best_strength:
                best_period, best_strength = period, strength
        if best_period == self._period:
            return
        self._period = best_period
        if best_period:
            phases = [p % best_period for p in self._phases]
            self._season = seasonal_profile(list(self._history), phases, best_period)
            self._level = sum(self._history) / len(self._history)
        else:
            self._season = []


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
