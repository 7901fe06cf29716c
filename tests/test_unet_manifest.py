"""The full-size UNet, built on the meta device, has exactly the official checkpoint's keys and shapes."""

import json

import pytest

from fastsync.config import UNET_PRESETS, UNetConfig
from fastsync.models.loading import build_unet_on_meta, diff_keys, expected_shapes
from fastsync.models.parity import check_manifest


@pytest.fixture(scope="module")
def manifest_path(golden_dir):
    return golden_dir / "unet_stage2_manifest.json"


@pytest.fixture(scope="module")
def manifest(manifest_path):
    return json.loads(manifest_path.read_text())


def _assert_matches(config, manifest):
    ours = expected_shapes(build_unet_on_meta(config))
    theirs = {k: tuple(v) for k, v in manifest["tensors"].items()}
    missing, unexpected, mismatched = diff_keys(theirs, ours)
    assert not missing, f"{len(missing)} missing, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}"
    assert not mismatched, mismatched[:5]
    assert len(ours) == len(theirs) == 1246
    # parameters + the 24-row position tables, as the manifest counts them
    assert sum(_numel(s) for s in ours.values()) == manifest["num_params"] == 1_267_944_644


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_stage2_512_matches_manifest(manifest):
    _assert_matches(UNET_PRESETS["stage2_512"], manifest)


def test_stage2_256_has_the_same_layout(manifest):
    _assert_matches(UNET_PRESETS["stage2"], manifest)


def test_manifest_config_equals_preset(manifest):
    assert UNetConfig.from_dict(manifest["config"]) == UNET_PRESETS["stage2_512"]


def test_check_manifest_metrics(manifest_path):
    metrics = check_manifest("stage2", {"manifest.json": manifest_path})
    assert {m.name for m in metrics} == {"missing_keys", "unexpected_keys", "shape_mismatches", "num_params"}
    assert all(m.passed and m.rule == "eq" for m in metrics), [m.describe() for m in metrics]
