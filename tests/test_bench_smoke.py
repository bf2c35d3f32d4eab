"""The benchmarks still run end to end (tiny numbers) and print their figures.

Only the presence of the figures is checked, never their values: timings are not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_recovery_overhead_benchmark_quick_run_prints_its_figures(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.recovery_overhead", "--quick", "--concurrency", "3",
         "--json", str(figures_file)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for line in ("detection-to-recovered overhead (ms)", "goal: overhead p50 <= 150 ms",
                 "service restart (restart_seconds)", "policy waits (validation window",
                 "later workflow task run time",
                 "medkit recoveries/s:", "baseline workflows/s:", "ratio medkit/baseline:",
                 "goal >= 0.8"):
        assert line in out, f"missing {line!r} in:\n{out}"
    figures = json.loads(figures_file.read_text())
    assert set(figures["overhead"]["all"]["overhead_ms"]) == {"p50", "p95", "mean"}
    assert figures["overhead"]["all"]["n"] == 2  # --quick: one run per fault
    assert figures["host_loop_ms"]["start"] > 0 and figures["host_loop_ms"]["end"] > 0
    # The whole validation window (2 intervals of 1 s between 3 rounds) is a policy wait, not
    # only the timers, which are shorter by each round's own probing time.
    waits = figures["overhead"]["components_ms"]["policy waits (validation window etc.)"]
    assert min(waits.values()) >= 2000.0
    throughput = figures["throughput"]
    assert {"medkit_per_s", "baseline_per_s", "ratio", "counts"} <= set(throughput)
    assert throughput["medkit_failed"] == 0
    assert throughput["counts"].get("local probe_service", 0) >= 1  # one probe round or more


def test_breaker_benchmark_quick_run_prints_its_figures(tmp_path: Path) -> None:
    figures_file = tmp_path / "breaker.json"
    run = subprocess.run([sys.executable, "-m", "bench.breaker", "--quick", "--json", str(figures_file)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for line in ("sync decision overhead", "async decision overhead", "goal: medkit overhead <= 200 ns",
                 "flapping dependency:", "ratios against pybreaker"):
        assert line in run.stdout, f"missing {line!r} in:\n{run.stdout}"
    figures = json.loads(figures_file.read_text())
    wrappers = {"pass-through", "forward own args", "medkit breakers"}
    assert set(figures["overhead"]["sync"]) == {"bare call", *wrappers, "pybreaker", "circuitbreaker",
                                                "purgatory (sync)"}
    assert set(figures["overhead"]["async"]) == {"bare await", *wrappers, "aiobreaker", "circuitbreaker",
                                                 "purgatory"}
    flapping = figures["flapping"]
    assert len(flapping) == 8
    for row in flapping.values():
        # Every breaker saw the dependency fail and let at least one failing call through.
        assert row["calls_while_failing"] > 0 and row["wasted"] >= 1


def test_probes_benchmark_quick_run_prints_its_figures(tmp_path: Path) -> None:
    figures_file = tmp_path / "probes.json"
    run = subprocess.run([sys.executable, "-m", "bench.probes", "--runs", "4", "--json", str(figures_file)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = ("http probe", "tcp probe", "process probe", "round of all three", "notify (webhook)")
    for line in ("activity p50", "ratio p50", *rows, "ActivityEnvironment harness", "ledger begin + finish"):
        assert line in run.stdout, f"missing {line!r} in:\n{run.stdout}"
    figures = json.loads(figures_file.read_text())
    assert figures["runs"] == 4 and set(figures["rows"]) == set(rows)
    for row in figures["rows"].values():
        assert {"activity_ms", "raw_ms", "ratio_p50", "added_ms_p50"} <= set(row)
        assert row["activity_ms"]["p50"] > 0 and row["raw_ms"]["p50"] > 0
    assert "harness_added_ms_p50" in figures and figures["notify_ledger_ms"]["p50"] > 0


def test_watchers_benchmark_quick_run_prints_its_figures(tmp_path: Path) -> None:
    figures_file = tmp_path / "watchers.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.watchers", "--rounds", "3", "--json", str(figures_file)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for line in ("health poller: one round of N services", "how late each request starts",
                 "forecaster step vs psutil reading", "vs numpy.polyfit", "vs numpy, same intervals",
                 "anomaly watch, per point", "vs bare detector update", "vs sum of the two"):
        assert line in run.stdout, f"missing {line!r} in:\n{run.stdout}"
    figures = json.loads(figures_file.read_text())
    assert figures["rounds"] == 3
    assert [fleet["services"] for fleet in figures["health_poller"]] == [1, 20, 100]
    for fleet in figures["health_poller"]:
        assert fleet["round_ms"]["poller"]["p50"] > 0 and fleet["round_ms"]["bare"]["p50"] > 0
    assert set(figures["pairs"]) == {"forecaster step vs psutil reading", "trend fit (statsmodels OLS)",
                                     "anomaly watch, per point"}
