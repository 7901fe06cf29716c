"""bench.run_all --reuse: the issue-5 summary picks the runs and fidelity it is told to."""

from __future__ import annotations

import json
import sys

from bench import run_all


def _fidelity(fidelity: float) -> dict:
    return {"frames": 242, "psnr_db": fidelity, "ssim": 0.99, "mouth_psnr_db": 30.0, "mouth_ssim": 0.9}


def _files(tmp_path):
    unet = {"variants": {"eager": {"median_s": 0.17, "tflops": 207.0},
                         "compiled_graph": {"median_s": 0.1, "tflops": 352.5},
                         "compiled_graph[cfg_pair]": {"median_s": 0.095, "tflops": 371.0}}}
    runs = [  # on, off, on, off: the later runs carry the other setting's memory
        {"cfg_pair": True, "host": "processes", "wall_s": 21.0, "peak_allocated_gb": 4.9},
        {"cfg_pair": False, "host": "processes", "wall_s": 30.0, "peak_allocated_gb": 5.3},
        {"cfg_pair": True, "host": "processes", "wall_s": 19.8, "peak_allocated_gb": 5.1},
        {"cfg_pair": False, "host": "processes", "wall_s": 19.5, "peak_allocated_gb": 5.1},
    ]
    e2e = {"environment": {"gpu": "NVIDIA H200"},
           "modes": {"reference": {"runs": [{"wall_s": 46.0, "peak_allocated_gb": 13.1}]},
                     "fast": {"load_s": 11.0, "runs": runs}},
           "fidelity_fast_vs_reference": _fidelity(44.0),
           "fidelity_by_cfg_pair": {"True": _fidelity(44.5), "False": _fidelity(44.0)},
           "ratios": {"e2e_wall_reference_over_fast": 2.36}}
    (tmp_path / "unet.json").write_text(json.dumps(unet))
    (tmp_path / "e2e.json").write_text(json.dumps(e2e))


def _summary(tmp_path, monkeypatch, *extra: str) -> dict:
    _files(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_all", "--reuse", "--gpu", "NVIDIA H200", "--out-dir", str(tmp_path),
                                      "--unet-json", str(tmp_path / "unet.json"),
                                      "--e2e-json", str(tmp_path / "e2e.json"), *extra])
    run_all.main()
    return json.loads((tmp_path / "h200.json").read_text())


def test_without_selection_the_fastest_run_counts(tmp_path, monkeypatch):
    out = _summary(tmp_path, monkeypatch, "--unet-variant", "compiled_graph")
    assert out["targets"]["e2e_wall_s"]["measured"] == 19.5
    assert out["targets"]["psnr_db"]["measured"] == 44.0
    assert out["side_by_side"]["unet_forward_fast_s"] == 0.1


def test_the_unet_forward_is_fast_modes_own_by_default(tmp_path, monkeypatch):
    from fastsync.engine import FastOptions

    assert FastOptions().cfg_pair  # fast mode's default, so its forward is the cfg_pair variant
    out = _summary(tmp_path, monkeypatch)
    assert out["side_by_side"]["unet_forward_fast_s"] == 0.095
    assert out["details"]["unet_variant"] == "compiled_graph[cfg_pair]"


def test_a_full_run_times_the_forward_fast_mode_uses(tmp_path, monkeypatch):
    _files(tmp_path)
    for name in ("unet", "e2e"):
        (tmp_path / f"{name}.json").rename(tmp_path / f"{name}_h200.json")
    calls = []
    monkeypatch.setattr(run_all, "_run", lambda module, *args: calls.append((module, args)))
    monkeypatch.setattr(sys, "argv", ["run_all", "--gpu", "NVIDIA H200", "--out-dir", str(tmp_path),
                                      "--video", "v.mp4", "--audio", "a.wav", "--landmarks", "l.json"])
    run_all.main()
    assert [module for module, _ in calls] == ["bench.bench_unet", "bench.bench_e2e"]
    assert "--cfg-pair" in calls[0][1]
    summary = json.loads((tmp_path / "h200.json").read_text())
    assert summary["side_by_side"]["unet_forward_fast_s"] == 0.095


def test_cfg_pair_selection_takes_its_runs_its_fidelity_and_its_own_peak(tmp_path, monkeypatch):
    out = _summary(tmp_path, monkeypatch, "--e2e-cfg-pair", "on", "--unet-variant", "compiled_graph[cfg_pair]")
    assert out["targets"]["e2e_wall_s"]["measured"] == 19.8
    assert out["targets"]["peak_gpu_allocated_gb"]["measured"] == 4.9
    assert out["targets"]["psnr_db"]["measured"] == 44.5
    assert out["side_by_side"]["e2e_speedup"] == round(46.0 / 19.8, 2)
    assert out["side_by_side"]["unet_forward_fast_s"] == 0.095
    assert out["details"]["e2e_cfg_pair"] == "on"
