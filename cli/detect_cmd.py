"""`medkit detect-csv FILE`: score a `timestamp,value` CSV offline with the streaming detector.

The output has one anomaly score in [0, 1] per input row, so a series can be scored (e.g. by the
NAB benchmark) exactly as the live `medkit watch` service would have scored it point by point.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from detectors.anomaly import AnomalyDetector


class CsvInputError(ValueError):
    """The input CSV is missing or malformed; the message names the file and row."""


@dataclass
class CsvSeries:
    """The rows of a CSV kept for scoring, and one warning per row skipped."""

    raw: list[list[str]] = field(default_factory=list)
    stamps: list[datetime] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_series(path: Path) -> CsvSeries:
    """Read and validate a ``timestamp,value`` CSV into the rows to score.

    A row whose timestamp goes back before the last row kept is skipped with a warning, as the
    live watch loop skips an out-of-order point: one stray row must not cost the whole series.
    Row numbers count the header as row 1, as a spreadsheet would.
    """
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise CsvInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    series = CsvSeries()
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["timestamp", "value"]:
            raise CsvInputError(f"{path}: row 1: expected header 'timestamp,value'")
        for row_number, row in enumerate(reader, start=2):
            stamp, value = _parse_row(path, row_number, row)
            if series.stamps and stamp < series.stamps[-1]:
                series.skipped.append(
                    f"{path}: row {row_number}: timestamp {row[0].strip()} goes back in time"
                    f" (before {series.raw[-1][0]}); row skipped"
                )
                continue
            series.raw.append([row[0].strip(), row[1].strip()])
            series.stamps.append(stamp)
            series.values.append(value)
    return series


def _parse_row(path: Path, row_number: int, row: list[str]) -> tuple[datetime, float]:
    """Parse one data row, or raise `CsvInputError` naming the row and the problem."""
    if len(row) != 2:
        raise CsvInputError(f"{path}: row {row_number}: expected 2 fields, got {len(row)}")
    try:
        stamp = datetime.fromisoformat(row[0].strip())
    except ValueError as exc:
        raise CsvInputError(f"{path}: row {row_number}: bad timestamp {row[0]!r}") from exc
    try:
        value = float(row[1])
    except ValueError as exc:
        raise CsvInputError(f"{path}: row {row_number}: bad value {row[1]!r}") from exc
    if not math.isfinite(value):
        raise CsvInputError(f"{path}: row {row_number}: value is not finite")
    return stamp, value


def write_scores(out: TextIO, series: CsvSeries) -> None:
    """Score the series point by point and write ``timestamp,value,anomaly_score`` rows."""
    detector = AnomalyDetector()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestamp", "value", "anomaly_score"])
    for row, stamp, value in zip(series.raw, series.stamps, series.values, strict=True):
        writer.writerow([*row, f"{detector.update(stamp, value):.6f}"])


def run(args: argparse.Namespace) -> int:
    """Run `detect-csv`; exit code 0 on success, 2 (one line on stderr) on bad input.

    Each row skipped for going back in time is one warning line on stderr.
    """
    try:
        series = read_series(Path(args.file))
    except CsvInputError as exc:
        print(f"medkit detect-csv: {exc}", file=sys.stderr)
        return 2
    for warning in series.skipped:
        print(f"medkit detect-csv: warning: {warning}", file=sys.stderr)
    if args.output is None:
        write_scores(sys.stdout, series)
        return 0
    try:
        with Path(args.output).open("w", newline="") as out:
            write_scores(out, series)
    except OSError as exc:
        print(f"medkit detect-csv: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``detect-csv`` subcommand."""
    parser = subparsers.add_parser(
        "detect-csv",
        help="Score each row of a timestamp,value CSV with the anomaly detector.",
        description="Write timestamp,value,anomaly_score (score in [0,1], using only the past)"
        " for each row of FILE.",
    )
    parser.add_argument("file", metavar="FILE", help="CSV with a 'timestamp,value' header.")
    parser.add_argument("-o", "--output", metavar="OUT", help="Write here instead of stdout.")
    parser.set_defaults(func=run)
