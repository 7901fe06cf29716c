"""fastsync.transfer: asynchronous copies must deliver exactly what a plain copy does."""

from __future__ import annotations

import pytest
import torch

from fastsync.transfer import Download, upload


def test_cpu_copies_pass_through():
    x = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    assert upload(x, "cpu") is x
    assert (Download(x).numpy() == x.numpy()).all()


@pytest.mark.requires_cuda
def test_cuda_round_trip_is_exact():
    faces = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
    on_gpu = upload(faces, "cuda")
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), faces)
    # A result still being computed when the copy is queued: the event must order the read.
    big = torch.randn(4096, 4096, device="cuda")
    result = (big @ big).sum(dim=0) / 4096
    landed = Download(result).numpy()
    assert torch.equal(torch.from_numpy(landed), result.cpu())
