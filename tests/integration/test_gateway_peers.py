"""bench/gateway_peers.py's harness on a few requests, so that it cannot rot: the real ``coe serve`` and
the real LiteLLM proxy (from .venv-gateway, which `make test` installs), with bench/_stub_backend.py
where llama-server would be. No timings are checked: only that every path answered, that the fault
run killed a backend and counted what happened, and that the JSON has the keys the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

GATEWAY = ROOT / ".venv-gateway" / "bin" / "litellm"
PATHS = ("direct", "coe_pinned", "coe_routed", "litellm")


def test_the_bench_runs_both_gateways_and_the_fault(tmp_path: Path) -> None:
    assert GATEWAY.exists(), f"{GATEWAY} is missing: `make gateway` (run by `make test`) installs it"
    out = tmp_path / "gateway_peers.json"
    args = ["--backends", "stub", "--requests", "3", "--concurrency", "1", "3", "--warmup", "1"]
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gateway_peers.py",
            *args,
            "--fault-requests",
            "12",
            "--json",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result

    paths = result["paths"]
    assert set(paths) == set(PATHS)
    for name in PATHS:
        for c in (1, 3):
            for key in (
                "overhead_ratio_p50",
                "overhead_ratio_p99",
                "stream_overhead_ratio_p50",
                "ttft_ratio_p50",
            ):
                assert isinstance(paths[name][f"{key}_c{c}"], float), (name, key, c)
            stats = paths[name]["latency_ms"][f"c{c}"]
            # Every overhead request was answered, whole and streamed, by the backend it was meant for.
            assert stats["n"] == stats["n_stream"] == 3 and stats["not_ok"] == {}, (name, stats)
            assert stats["answered_by"] == {"coder": 6}, (name, stats)
        assert paths["direct"][f"overhead_ratio_p50_c{c}"] == 1.0

    for name in ("coe_routed", "litellm"):
        fault = paths[name]["fault"]
        counts = {k: paths[name][k] for k in ("lost", "errors_5xx", "fallbacks", "streams_cut")}
        assert fault["killed"]["backend"] == "coder" and fault["killed"]["after_completed"] == 4
        settled = fault["ok"] + counts["lost"] + counts["errors_5xx"] + fault["errors_4xx"]
        assert settled + counts["streams_cut"] == 12, (name, fault, counts)
        # With coder dead, the code and math prompts after the kill are answered by general.
        assert counts["fallbacks"] >= 1, (name, counts)
    assert paths["coe_routed"]["lost"] == 0 and paths["coe_routed"]["errors_5xx"] == 0

    assert result["left_running"] == 0
    assert set(result["exit_codes"]) == {"coe serve", "litellm"}
    assert result["versions"]["litellm_proxy"] == "1.106.2"
    assert result["litellm_config"]["router_settings"]["fallbacks"] == [
        {"coder": ["general"]},
        {"general": ["coder"]},
    ]
    machine = {"load_avg_1m_before", "load_avg_1m_after", "load_avg_1m_max"}
    assert machine <= set(result["machine"])
