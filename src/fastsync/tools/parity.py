"""`fastsync check-parity DIR`: run every golden case found in DIR through our code.

Cases are discovered by file pattern, never from a fixed list, so held-back cases
with the same naming are picked up as they are:

    unet_<case>_{config.json,unet.pt,io.pt}
    whisper_<case>_{whisper.pt,features.pt}
    align_<case>_align.pt
    unet_stage2_manifest.json

A case we cannot run (a missing companion file, a crash) is a failure, never a skip.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Metric:
    name: str
    value: float
    tolerance: float
    # "le": value <= tolerance passes; "eq": value == tolerance passes (exact counts).
    rule: str = "le"

    @property
    def passed(self) -> bool:
        if self.value != self.value:  # NaN never passes
            return False
        return self.value == self.tolerance if self.rule == "eq" else self.value <= self.tolerance

    def describe(self) -> str:
        op = "==" if self.rule == "eq" else "<="
        mark = "ok" if self.passed else "FAIL"
        return f"{self.name} {self.value:.3g} {op} {self.tolerance:.3g} {mark}"


@dataclass
class CaseResult:
    kind: str
    name: str
    metrics: list[Metric] = field(default_factory=list)
    error: str | None = None  # set when the case could not run at all

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.metrics) and all(m.passed for m in self.metrics)

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        body = self.error if self.error else "; ".join(m.describe() for m in self.metrics)
        return f"{status} {self.kind:<8} {self.name:<24} {body}"


# kind -> (regex on file name capturing the case name, required companion suffixes)
PATTERNS: dict[str, tuple[re.Pattern[str], tuple[str, ...]]] = {
    "unet": (re.compile(r"^unet_(?P<case>.+)_config\.json$"), ("config.json", "unet.pt", "io.pt")),
    "whisper": (re.compile(r"^whisper_(?P<case>.+)_whisper\.pt$"), ("whisper.pt", "features.pt")),
    "align": (re.compile(r"^align_(?P<case>.+)_align\.pt$"), ("align.pt",)),
    "manifest": (re.compile(r"^unet_(?P<case>.+)_manifest\.json$"), ("manifest.json",)),
}


def discover(directory: Path) -> list[tuple[str, str, dict[str, Path]]]:
    """Return (kind, case, {suffix: path}) for every case file found in `directory`."""
    found = []
    for path in sorted(directory.iterdir()):
        for kind, (pattern, suffixes) in PATTERNS.items():
            match = pattern.match(path.name)
            if not match:
                continue
            case = match["case"]
            files = {s: directory / f"{kind if kind != 'manifest' else 'unet'}_{case}_{s}" for s in suffixes}
            found.append((kind, case, files))
    return found


def _runner(kind: str) -> Callable[[str, dict[str, Path]], list[Metric]]:
    # Imported lazily: each domain pulls in its own heavy dependencies.
    if kind == "unet":
        from fastsync.models.parity import check_unet_case

        return check_unet_case
    if kind == "manifest":
        from fastsync.models.parity import check_manifest

        return check_manifest
    if kind == "whisper":
        from fastsync.audio.parity import check_whisper_case

        return check_whisper_case
    if kind == "align":
        from fastsync.face.parity import check_align_case

        return check_align_case
    raise ValueError(kind)


def run_case(kind: str, case: str, files: dict[str, Path]) -> CaseResult:
    result = CaseResult(kind, case)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        result.error = f"missing companion file(s): {', '.join(missing)}"
        return result
    try:
        result.metrics = _runner(kind)(case, files)
    except Exception as exc:  # a case that cannot run is reported as a failure
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        result.error = f"could not run: {type(exc).__name__}: {exc} ({tb})"
    return result


def check_parity(directory: Path, echo: Callable[[str], None] = print) -> list[CaseResult]:
    if not directory.is_dir():
        from fastsync.errors import InputError

        raise InputError("not a directory of golden cases", directory,
                         hint="pass the folder that holds unet_*/whisper_*/align_* files")
    cases = discover(directory)
    results = []
    for kind, case, files in cases:
        result = run_case(kind, case, files)
        echo(result.line())
        results.append(result)
    if not cases:
        echo(f"FAIL no golden cases found in {directory}")
    return results
