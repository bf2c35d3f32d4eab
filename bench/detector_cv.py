"""Cross-validated NAB score of the anomaly detector: tuned on training files, scored held out.

Usage: ``nice -n 10 .venv/bin/python bench/detector_cv.py [--grid-size 16] [--k 5] [--seed 0]``

Two strategies are compared on the same folds (see ``detectors/nab_cv.py``): the shipped
default with only the detection threshold tuned on the training files, and a subsample of
``DEFAULT_GRID`` (default first) from which each fold picks its configuration and threshold on
its training files. Every candidate scores the whole corpus once (about 7 s each on a loaded
2-core machine), then every fold reuses those scores. NAB data is read as in
``bench/detector.py`` (``../shared/nab`` or ``$MEDKIT_NAB_DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.anomaly import AnomalyDetectorConfig  # noqa: E402
from detectors.nab_cv import (  # noqa: E402
    DEFAULT_GRID,
    Candidate,
    Fold,
    ScoredCorpus,
    Summary,
    cross_validate,
    detector_scorer,
    leave_one_category_out,
    sample_grid,
    stratified_k_fold,
)
from detectors.nab_scoring import load_corpus  # noqa: E402

SHIPPED = AnomalyDetectorConfig()


def describe(config: AnomalyDetectorConfig) -> str:
    """The tuned fields of ``config`` that differ from the shipped default ('default' if none)."""
    changed = [
        f"{name}={getattr(config, name):g}"
        for name in sorted(DEFAULT_GRID)
        if getattr(config, name) != getattr(SHIPPED, name)
    ]
    return ", ".join(changed) or "default"


def report(title: str, summary: Summary, scored: ScoredCorpus) -> None:
    """Print one split's per-fold held-out scores, their spread, the pooled and category scores."""
    print(f"\n{title}")
    print(
        f"  {'fold':<30} {'files':>5} {'train':>6} {'held-out':>8} {'(own thr)':>9}"
        f" {'thr':>6} {'windows':>7} {'FP':>4}  chosen"
    )
    for r in summary.folds:
        print(
            f"  {r.fold.name:<30} {len(r.fold.test):>5} {r.train_score:>6.1f} {r.held_out:>8.1f}"
            f" {r.held_out_own_threshold:>9.1f} {r.threshold:>6.3f}"
            f" {r.windows_detected:>3}/{r.windows_total:<3} {r.fp_rows:>4}  {r.candidate}"
        )
    print(
        f"  held-out over folds: mean {summary.mean:.1f}, std {summary.std:.1f},"
        f" min {summary.minimum:.1f}, max {summary.maximum:.1f}; pooled over all files"
        f" {summary.pooled:.1f}"
    )
    cells = ", ".join(f"{c} {v:.1f}" for c, v in summary.per_category.items())
    print(f"  pooled per category: {cells}", flush=True)


def main() -> int:
    """Score every candidate once, then cross-validate both strategies on both splits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grid-size", type=int, default=16, help="Configurations tried (>= 1).")
    parser.add_argument("--k", type=int, default=5, help="Folds of the k-fold split.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the k-fold and grid draws.")
    args = parser.parse_args()
    directory = Path(os.environ.get("MEDKIT_NAB_DIR", REPO.parent / "shared" / "nab"))
    if not (directory / "labels").is_dir():
        print(f"NAB data not found at {directory} (set MEDKIT_NAB_DIR)", file=sys.stderr)
        return 2
    corpus = load_corpus(directory)
    configs = sample_grid(DEFAULT_GRID, args.grid_size, args.seed, SHIPPED)
    started = time.perf_counter()
    scored = ScoredCorpus(
        corpus,
        [Candidate(describe(c), detector_scorer(c)) for c in configs],
        progress=lambda line: print(f"  [{time.perf_counter() - started:5.0f} s] {line}",
                                    flush=True),
    )
    splits: list[tuple[str, list[Fold]]] = [
        ("leave one category out", leave_one_category_out(corpus)),
        (f"stratified {args.k}-fold, seed {args.seed}", stratified_k_fold(corpus, args.k,
                                                                         args.seed)),
    ]
    for split, folds in splits:
        report(f"{split}: shipped default, threshold tuned on training files",
               cross_validate(scored, folds, candidates=[0]), scored)
        report(f"{split}: configuration and threshold tuned on training files"
               f" ({len(configs)} configurations)", cross_validate(scored, folds), scored)
    print(f"\n{len(corpus)} files, {len(configs)} configurations,"
          f" {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
