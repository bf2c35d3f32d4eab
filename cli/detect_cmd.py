"""`medkit detect-csv FILE`: score a `timestamp,value` CSV offline with the streaming detector.

The output has one anomaly score in [0, 1] per input row, so a series can be scored (e.g. by the
NAB benchmark) exactly as the live `medkit watch` service would have scored it point by point.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

from detectors.anomaly import AnomalyDetector


class CsvInputError(ValueError):
    """The input CSV is missing or malformed; the message names the file and row."""


def read_series(path: Path) -> tuple[list[list[str]], list[datetime], list[float]]:
    """Read and validate a ``timestamp,value`` CSV; returns the raw rows, timestamps and values.

    Row numbers in errors count the header as row 1, as a spreadsheet would.
    """
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise CsvInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raw: list[list[str]] = []
    stamps: list[datetime] = []
    values: list[float] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["timestamp", "value"]:
            raise CsvInputError(f"{path}: row 1: expected header 'timestamp,value'")
        for row_number, row in enumerate(reader, start=2):
            stamp, value = _parse_row(path, row_number, row)
            if stamps and stamp < stamps[-1]:
                raise CsvInputError(f"{path}: row {row_number}: timestamp goes back in time")
            raw.append([row[0].strip(), row[1].strip()])
            stamps.append(stamp)
            values.append(value)
    return raw, stamps, values


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


def write_scores(
    out: TextIO, raw: list[list[str]], stamps: list[datetime], values: list[float]
) -> None:
    """Score the series point by point and write ``timestamp,value,anomaly_score`` rows."""
    detector = AnomalyDetector()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestamp", "value", "anomaly_score"])
    for row, stamp, value in zip(raw, stamps, values, strict=True):
        writer.writerow([*row, f"{detector.update(stamp, value):.6f}"])


def run(args: argparse.Namespace) -> int:
    """Run `detect-csv`; exit code 0 on success, 2 (one line on stderr) on bad input."""
    try:
        raw, stamps, values = read_series(Path(args.file))
    except CsvInputError as exc:
        print(f"medkit detect-csv: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        write_scores(sys.stdout, raw, stamps, values)
        return 0
    try:
        with Path(args.output).open("w", newline="") as out:
            write_scores(out, raw, stamps, values)
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
