"""`fastsync check-parity DIR`: every golden case passes; a broken or incomplete case fails,
and so does a folder with no case at all."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from fastsync import cli

# "name value <= tolerance ok": a measured error and the tolerance it is held to
METRIC = re.compile(r"(?P<name>\w+) (?P<value>[-+.\deinfa]+) (?P<op><=|==) (?P<tol>[-+.\de]+) (?P<mark>ok|FAIL)")
CASE_FILES = {"unet": "unet_*_config.json", "whisper": "whisper_*_whisper.pt", "align": "align_*_align.pt",
              "manifest": "unet_*_manifest.json"}


def check_parity(directory, capsys) -> tuple[int, list[str], str]:
    code = cli.main(["check-parity", str(directory)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def case_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("PASS", "FAIL"))]


def test_golden_folder_passes_case_by_case(golden_dir, capsys):
    expected = {kind: sorted(golden_dir.glob(pattern)) for kind, pattern in CASE_FILES.items()}
    n_cases = sum(len(files) for files in expected.values())
    assert all(expected.values()), f"golden folder lacks a kind of case: {expected}"

    code, lines, _ = check_parity(golden_dir, capsys)
    cases = case_lines(lines)
    assert code == 0
    assert len(cases) == n_cases and all(line.startswith("PASS") for line in cases), lines
    for kind, files in expected.items():
        assert sum(line.split()[1] == kind for line in cases) == len(files), kind
    for line in cases:
        metrics = list(METRIC.finditer(line))
        assert metrics, f"no measured error and tolerance in: {line}"
        assert all(m["mark"] == "ok" for m in metrics)
    assert lines[-1] == f"{n_cases}/{n_cases} cases passed"


@pytest.fixture
def tiny_unet_case(golden_dir, tmp_path):
    for suffix in ("config.json", "unet.pt", "io.pt"):
        shutil.copyfile(golden_dir / f"unet_tiny_{suffix}", tmp_path / f"unet_tiny_{suffix}")
    return tmp_path


def test_the_copied_case_passes_on_its_own(tiny_unet_case, capsys):
    code, lines, _ = check_parity(tiny_unet_case, capsys)
    assert code == 0 and case_lines(lines)[0].startswith("PASS unet")


def test_perturbed_output_fails(tiny_unet_case, golden_dir, capsys):
    io_path = tiny_unet_case / "unet_tiny_io.pt"
    io = torch.load(io_path, weights_only=True)
    io["output"] = io["output"] * 1.001  # 1e-3 relative: ten times the 1e-4 tolerance
    torch.save(io, io_path)
    shutil.copyfile(golden_dir / "unet_stage2_manifest.json", tiny_unet_case / "unet_stage2_manifest.json")

    code, lines, _ = check_parity(tiny_unet_case, capsys)
    assert code == 1
    cases = {line.split()[1]: line for line in case_lines(lines)}
    assert cases["manifest"].startswith("PASS")
    failed = cases["unet"]
    assert failed.startswith("FAIL unet")
    metric = next(METRIC.finditer(failed))
    assert metric["name"] == "rel_max_err" and metric["mark"] == "FAIL"
    assert float(metric["value"]) == pytest.approx(1e-3 / 1.001, rel=0.05) and float(metric["tol"]) == 1e-4
    assert lines[-1] == "1/2 cases passed"


@pytest.mark.parametrize("kind, keep, missing", [
    ("unet", ("config.json", "unet.pt"), "unet_tiny_io.pt"),
    ("whisper", ("whisper.pt",), "whisper_tiny_random_features.pt"),
])
def test_missing_companion_file_fails(golden_dir, tmp_path, capsys, kind, keep, missing):
    stem = "unet_tiny" if kind == "unet" else "whisper_tiny_random"
    for suffix in keep:
        (tmp_path / f"{stem}_{suffix}").symlink_to(golden_dir / f"{stem}_{suffix}")
    code, lines, _ = check_parity(tmp_path, capsys)
    assert code == 1
    [line] = case_lines(lines)
    assert line.startswith(f"FAIL {kind}") and "missing companion" in line and str(tmp_path / missing) in line


def test_empty_folder_fails(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no golden case here")
    code, lines, _ = check_parity(tmp_path, capsys)
    assert code == 1
    assert any(line.startswith("FAIL no golden cases found") for line in lines)


def test_missing_folder_is_an_error_not_a_crash(tmp_path, capsys):
    absent = tmp_path / "absent"
    code, _, err = check_parity(absent, capsys)
    assert code == 2
    assert f"fastsync: error: {absent}: not a directory of golden cases" in err and "Traceback" not in err
