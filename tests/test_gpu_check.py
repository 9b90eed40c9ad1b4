"""examples/gpu_check.py runs end to end on the CPU stand-in for cupy (tiny shapes, no reference models) and
writes its reports with every op case passing (the GPU run itself needs a device)."""
from __future__ import annotations

import json

from test_examples import run_example


def test_gpu_check_on_the_stand_in(tmp_path):
    out = run_example("gpu_check.py", str(tmp_path), "--stand-in", "--models", "", "--shapes", "tiny",
                      "--prefill-tokens", "12", "--decode-tokens", "3")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ops"] and all(row["ok"] for row in report["ops"])
    assert [(r["model"], r["cuda_graphs"]) for r in report["speed"]] == [
        ("tiny Q4_0", True), ("tiny Q8_0", True), ("tiny Q4_0", False), ("tiny Q8_0", False)]
    for row in report["speed"]:
        assert row["decode_tps"] > 0 and row["prefill_tps"] > 0
        assert row["hbm_bound_tps"] == report["copy_gb_per_s"] * 1e9 / row["weight_bytes_per_token"]
    assert (tmp_path / "gpu_check.md").read_text() in out
