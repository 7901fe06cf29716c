"""fastsync.transfer: asynchronous copies must deliver exactly what a plain copy does."""

from __future__ import annotations

import pytest
import torch

from fastsync.transfer import Download, LaunchThrottle, upload


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


def test_throttle_is_off_on_cpu_and_at_zero():
    assert not LaunchThrottle("cpu", 2).enabled
    assert not LaunchThrottle("cuda", 0).enabled
    LaunchThrottle("cpu", 2).mark()  # a no-op, even without CUDA


@pytest.mark.requires_cuda
def test_throttle_keeps_at_most_depth_marks_queued():
    throttle = LaunchThrottle("cuda", 2)
    big = torch.randn(4096, 4096, device="cuda")
    for _ in range(6):
        big = (big @ big) / 4096
        throttle.mark()
        assert len(throttle._pending) <= 2
