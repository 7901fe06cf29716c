"""Golden parity checks for the UNet, run by `fastsync check-parity DIR`.

- `check_unet_case`: the reference's output for seeded random weights in the official
  checkpoint layout; ours must match to max|ours - ref| / max|ref| <= 1e-4 in fp32
  (measured: about 1.5e-6 on the `tiny` case; the rest is reduction order).
- `check_manifest`: the full-size model built from the manifest's config must have exactly
  the checkpoint's tensor names and shapes, so the official file loads with strict=True.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastsync.config import UNetConfig
from fastsync.models.loading import build_unet_on_meta, diff_keys, expected_shapes, load_unet
from fastsync.tools.parity import Metric

REL_MAX_ERR_TOL = 1e-4


def relative_max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref|; shape mismatch is an error, not a large number."""
    if ours.shape != ref.shape:
        raise ValueError(f"output shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def check_unet_case(case: str, files: dict[str, Path]) -> list[Metric]:
    config = UNetConfig.from_json(files["config.json"])
    model = load_unet(files["unet.pt"], config, dtype=torch.float32)
    io = torch.load(files["io.pt"], map_location="cpu", weights_only=True)
    with torch.inference_mode():
        output = model(io["sample"].float(), io["timestep"], io["encoder_hidden_states"].float())
    return [Metric("rel_max_err", relative_max_error(output, io["output"].float()), REL_MAX_ERR_TOL)]


def check_manifest(case: str, files: dict[str, Path]) -> list[Metric]:
    manifest = json.loads(Path(files["manifest.json"]).read_text())
    model = build_unet_on_meta(UNetConfig.from_dict(manifest["config"]))
    ours = expected_shapes(model)
    theirs = {name: tuple(shape) for name, shape in manifest["tensors"].items()}
    missing, unexpected, mismatched = diff_keys(theirs, ours)
    # The manifest counts every stored element, the position-table buffers included.
    num_params = sum(torch.Size(shape).numel() for shape in ours.values())
    return [
        Metric("missing_keys", len(missing), 0, rule="eq"),
        Metric("unexpected_keys", len(unexpected), 0, rule="eq"),
        Metric("shape_mismatches", len(mismatched), 0, rule="eq"),
        Metric("num_params", num_params, manifest["num_params"], rule="eq"),
    ]
