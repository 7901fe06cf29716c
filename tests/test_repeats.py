"""Equal consecutive faces are VAE-encoded once (fastsync.accel.repeats, FastOptions.repeated_faces).

The plan is checked on its own, then the denoiser with the switch against the denoiser
without it: the same chunks give the same faces within fp32 rounding, the generator ends
in the same state, and the VAE sees fewer faces.
"""

from __future__ import annotations

import pytest
import torch
from denoise_fakes import CountingVAE, trivial_predictor

from fastsync.accel.repeats import SAMPLE_STRIDE, RepeatedFaces, same_face
from fastsync.components import make_scheduler, random_vae
from fastsync.denoise import ChunkDenoiser, SamplingOptions
from fastsync.face.mask import mask_for_resolution

REL = 1e-5  # fp32: a face encoded in another micro-batch


def _face(letter: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(ord(letter))
    return torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)


def _faces(pattern: str) -> torch.Tensor:
    """One 64 px face per letter; equal letters are equal faces."""
    return torch.stack([_face(letter) for letter in pattern])


def test_faces_are_compared_byte_for_byte():
    a = _face("a")
    assert same_face(a, a.clone())
    for index in (1, SAMPLE_STRIDE):  # off the sparse sample, and on it
        b = a.clone()
        b.view(-1)[index] ^= 1
        assert not same_face(a, b)
    assert not same_face(a, a[:, :32])


def test_a_plan_encodes_the_first_face_of_each_run():
    assert RepeatedFaces().plan(_faces("abccbaa")) == ([0, 1, 2, 4, 5], [0, 1, 2, 2, 3, 4, 4], False)
    assert RepeatedFaces().plan(_faces("abcd")) == ([0, 1, 2, 3], [0, 1, 2, 3], False)


def test_a_run_carries_on_into_the_next_chunk():
    repeats = RepeatedFaces()
    repeats.remember(_face("a"), [(torch.zeros(4, 1), torch.ones(4, 1))])
    assert repeats.plan(_faces("aaab")) == ([3], [0, 0, 0, 1], True)
    assert repeats.plan(_faces("aaaa")) == ([], [0, 0, 0, 0], True)
    assert repeats.plan(_faces("baab")) == ([0, 1, 3], [0, 1, 1, 2], False)


def _denoiser(repeated: bool, frames: int, device: str, dtype: torch.dtype) -> tuple[ChunkDenoiser, CountingVAE]:
    vae = CountingVAE(random_vae("tiny", seed=3)).to(device, dtype)
    mask = torch.from_numpy(mask_for_resolution(64)).float()
    denoiser = ChunkDenoiser(trivial_predictor, vae, make_scheduler(), mask,
                             SamplingOptions(steps=3, num_frames=frames), device=torch.device(device),
                             dtype=dtype, batch_vae=True, vae_micro_batch=3, repeated_faces=repeated)
    return denoiser, vae


def _run(repeated: bool, chunks: list[str], device: str = "cpu",
         dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], ChunkDenoiser, CountingVAE]:
    denoiser, vae = _denoiser(repeated, len(chunks[0]), device, dtype)
    g = torch.Generator().manual_seed(8)
    with torch.inference_mode():
        out = [denoiser(_faces(pattern), torch.randn(len(pattern), 50, 384, generator=g)).float().cpu()
               for pattern in chunks]
    return out, denoiser, vae


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=REL * expected.abs().max().item())


@pytest.mark.parametrize(("chunks", "encoded"), [
    (["aaaaa", "aaaaa"], [3]),  # a photo: one face, masked and whole, in one padded call
    (["abbcc", "cccba"], [3, 3, 3, 3]),  # a loop's turn inside a chunk and across two: a, b, c; then b, a
])
def test_repeated_faces_are_encoded_once_and_denoised_as_before(chunks, encoded):
    plain, plain_denoiser, plain_vae = _run(False, chunks)
    ours, denoiser, vae = _run(True, chunks)
    assert plain_vae.encode_sizes == [3, 3, 3, 3] * len(chunks)  # 10 faces a chunk, 3 a call
    assert vae.encode_sizes == encoded
    for got, expected in zip(ours, plain):
        _close(got, expected)
    # every face drew its own posterior sample: the generators are where they would be
    assert torch.equal(denoiser.generator.get_state(), plain_denoiser.generator.get_state())


def test_a_video_without_repeats_takes_the_plain_path():
    plain, _, plain_vae = _run(False, ["abcde", "fghij"])
    ours, _, vae = _run(True, ["abcde", "fghij"])
    assert vae.encode_sizes == plain_vae.encode_sizes
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))


@pytest.mark.requires_cuda
def test_on_a_gpu_in_fp16_as_fast_mode_runs_it():
    """The index lists go up pinned, without waiting; the faces match within fp16 rounding."""
    chunks = ["abbcc", "cccba"]
    plain, plain_denoiser, _ = _run(False, chunks, "cuda", torch.float16)
    ours, denoiser, vae = _run(True, chunks, "cuda", torch.float16)
    assert vae.encode_sizes == [3, 3, 3, 3]
    for got, expected in zip(ours, plain):
        torch.testing.assert_close(got, expected, rtol=0, atol=4e-3 * expected.abs().max().item())
    assert torch.equal(denoiser.generator.get_state(), plain_denoiser.generator.get_state())
