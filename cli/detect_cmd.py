"""`medkit detect-csv FILE`: score a `timestamp,value` CSV offline with the streaming detector.

The output has one anomaly score in [0, 1] per input row, so a series can be scored (e.g. by the
NAB benchmark) exactly as the live `medkit watch` service would have scored it point by point.
"""

from __future__ import annotations

import argparse
import csv
import io
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


def _decode(path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark dropped; CsvInputError if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CsvInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise CsvInputError(f"{path}: row {row}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                            "save the file as UTF-8") from None


def _check_header(path: Path, header: list[str] | None) -> None:
    """Refuse anything but exactly the two columns ``timestamp,value`` (any case, spaces around)."""
    if header is None or [h.strip().lower() for h in header] != ["timestamp", "value"]:
        got = ",".join(header)[:80] if header else "nothing"
        raise CsvInputError(f"{path}: row 1: expected header 'timestamp,value' (exactly two "
                            f"columns), got {got!r}")


def read_series(path: Path) -> CsvSeries:
    """Read and validate a ``timestamp,value`` CSV into the rows to score.

    A row whose timestamp is not after the last row kept (earlier, or the same) is skipped with
    a warning, as the live watch loop skips such a point: one stray row must not cost the whole
    series. Blank lines are ignored. Row numbers count the header as row 1, as a spreadsheet would.
    """
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    series = CsvSeries()
    _check_header(path, next(reader, None))
    first_row = 0  # the row of the first timestamp, which sets whether timestamps have offsets
    for row_number, row in enumerate(reader, start=2):
        if not "".join(row).strip():
            continue
        stamp, value = _parse_row(path, row_number, row)
        if not series.stamps:
            first_row = row_number
        else:
            _check_same_kind(path, row_number, row[0], stamp, series.stamps[0], first_row)
            if stamp <= series.stamps[-1]:
                how = "goes back in time (before " if stamp < series.stamps[-1] else "repeats ("
                series.skipped.append(f"{path}: row {row_number}: timestamp {row[0].strip()} "
                                      f"{how}{series.raw[-1][0]}, the last row kept); row skipped")
                continue
        series.raw.append([row[0].strip(), row[1].strip()])
        series.stamps.append(stamp)
        series.values.append(value)
    return series


def _check_same_kind(path: Path, row_number: int, text: str, stamp: datetime,
                     first: datetime, first_row: int) -> None:
    """Refuse a timestamp with a UTC offset among ones without (or the reverse), naming the row
    of the first timestamp (`first`, at `first_row`): they cannot be ordered, and guessing the
    missing offset could misorder the series."""
    if (stamp.tzinfo is None) != (first.tzinfo is None):
        has = "has no UTC offset" if stamp.tzinfo is None else "has a UTC offset"
        raise CsvInputError(f"{path}: row {row_number}: timestamp {text.strip()!r} {has}, unlike "
                            f"row {first_row}'s; give every timestamp an offset (e.g. Z) or none")


def _parse_row(path: Path, row_number: int, row: list[str]) -> tuple[datetime, float]:
    """Parse one data row, or raise `CsvInputError` naming the row and the problem."""
    if len(row) != 2:
        raise CsvInputError(f"{path}: row {row_number}: expected 2 fields, got {len(row)}")
    try:
        stamp = datetime.fromisoformat(row[0].strip())
    except ValueError as exc:
        raise CsvInputError(f"{path}: row {row_number}: bad timestamp {row[0]!r}: expected ISO "
                            "8601, e.g. 2024-01-01T00:00:00Z or 2024-01-01 00:00:00") from exc
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

    Each row skipped (its timestamp not after the last row kept) is one warning line on stderr,
    followed by one line counting them.
    """
    try:
        series = read_series(Path(args.file))
    except CsvInputError as exc:
        print(f"medkit detect-csv: {exc}", file=sys.stderr)
        return 2
    for warning in series.skipped:
        print(f"medkit detect-csv: warning: {warning}", file=sys.stderr)
    if series.skipped:
        count = len(series.skipped)
        print(f"medkit detect-csv: {count} row{'s' if count > 1 else ''} skipped, "
              f"{len(series.raw)} scored", file=sys.stderr)
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
        help="score each row of a timestamp,value CSV with the anomaly detector",
        description="Write timestamp,value,anomaly_score (score in [0,1], using only the past)"
        " for each row of FILE.",
    )
    parser.add_argument("file", metavar="FILE", help="UTF-8 CSV with a 'timestamp,value' header"
                        " and ISO 8601 timestamps.")
    parser.add_argument("-o", "--output", metavar="OUT", help="Write here instead of stdout.")
    parser.set_defaults(func=run)
