"""`make bench` at a tiny size, so the benchmark cannot rot between full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_bench_smoke_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--smoke", "--label", "smoke"),
            *("--out", str(tmp_path)),
            # The comparison arm, with a second simulator standing in for another proxy.
            *("--proxy-cmd", f"exec {sys.executable} -m parley_sim --port {{port}}"),
            *("--proxy-path", "/openai/v1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.glob("*-smoke.json")
    results = json.loads(path.read_text())
    for name in ("ttft_1", "ttft_1c", "c32", "c256"):
        scenario = results[name]
        for side in ("parley", "direct"):
            assert scenario[side]["errors"] == 0, (name, side, scenario[side])
            assert scenario[side]["turns"] > 0
            assert scenario[side]["ttft_ms"]["p50"] > 0
        # Every Parley process did measurable work and was measured.
        assert {"gateway", "worker", "history"} <= scenario["cpu_ms_per_turn"].keys()
        # The same load went through the other proxy, except a continued conversation.
        if name == "ttft_1c":
            assert "proxy" not in scenario
        else:
            proxy = scenario["proxy"]
            assert (proxy["errors"], proxy["turns"]) == (0, scenario["direct"]["turns"])
            assert proxy["cpu_ms_per_turn"] > 0
            assert f"| {name} | " in proc.stdout  # in the comparison table
    assert results["hold"]["open"] == results["hold"]["streams"]
    assert results["hold"]["heartbeats"] >= 2 * results["hold"]["streams"]
    assert results["relay"]["complete"] is True
    assert set(results["headline"]) == set(results["met"])
    marker = results["machine"]["speed_marker_ms"]
    assert marker["start"] > 0 and marker["end"] > 0
    # The table a reader sees names every measure.
    for measure in results["headline"]:
        assert measure in proc.stdout
