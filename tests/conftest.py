import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASTSYNC_SHARED", ROOT.parent / "shared")).resolve()
GOLDEN = SHARED / "golden"
ASSETS = SHARED / "assets"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_cuda: no CUDA device here")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.fail(f"golden data not found at {GOLDEN}; put ../shared beside the checkout")
    return GOLDEN


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    if not ASSETS.is_dir():
        pytest.fail(f"demo assets not found at {ASSETS}; put ../shared beside the checkout")
    return ASSETS


@pytest.fixture
def detections(engine, monkeypatch):
    """Counts the face detections the engine's landmarker runs (`engine`: the test module's
    own loaded engine fixture)."""
    calls = []
    detect = engine.components.landmarker.detect

    def counting(frame, near=None):
        calls.append(1)  # list.append is atomic: detection runs on worker threads
        return detect(frame, near=near)

    monkeypatch.setattr(engine.components.landmarker, "detect", counting)
    return calls
