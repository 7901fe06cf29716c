"""Would 8-bit UNet weights or fp8 matmuls keep the reference's output? Measured before building.

Issue 5 lists "fp8/int8 weight-only UNet" as a lever. Two questions decide it, and neither
needs a GPU:

1. *What share of the work could 8-bit matmuls take?* Counted with torch's FLOP counter on
   the full-size 512 px UNet built on the meta device (one CFG pair of 16 frames).
2. *What do they cost in accuracy?* The full-size UNet (random weights, fp32) runs once
   plainly and once with every `F.linear` seeing rounded operands; the noise prediction's
   signal-to-noise ratio against the plain one is reported. The rounding is exact
   simulation: an fp8 GEMM with fp32 accumulation (`torch._scaled_mm`, rowwise scales)
   computes the same products of the same rounded numbers, only summed in another order.
   Linears rounded to fp16 are the yardstick: that is the order of error fp16 weights and
   activations already bring.

3. *What is left of it after a whole chunk?* With `--loop`, one 4-frame chunk at 256 px goes
   through the job's path (VAE encode, 20 DDIM steps with DeepCache 3 and guidance 1.5,
   VAE decode, the mask blend) once per variant, the rounding applied to the UNet only; the
   face crops' PSNR against the plain run is reported, whole and inside the regenerated
   mouth region.

Convolutions stay as they are in every variant (no 8-bit convolution in torch).
The sample is 4 frames at 256 px, to fit the CPU; per-element rounding error does not
depend on the frame count or the grid size. Random weights: trained weights have other
value distributions (outlier channels above all), which usually make 8-bit rounding worse,
not better.

    python -m bench.bench_quant_error --loop --out bench/results/quant_error_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from bench.common import environment, save
from fastsync.config import UNET_PRESETS
from fastsync.models.loading import build_unet_on_meta, random_unet

E4M3_MAX = 448.0  # largest float8_e4m3fn


def fp8_rowwise(x: torch.Tensor) -> torch.Tensor:
    """Round to e4m3 with one scale per row (token, or output channel), as rowwise _scaled_mm does."""
    scale = E4M3_MAX / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return (x * scale).to(torch.float8_e4m3fn).float() / scale


def int8_rowwise(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale


def fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


# variant -> (how the input is rounded, how the weight is rounded); None = untouched
VARIANTS = {
    "linears_fp16": (fp16, fp16),
    "fp8_activations_and_weights": (fp8_rowwise, fp8_rowwise),
    "fp8_weights_only": (None, fp8_rowwise),
    "int8_weights_only": (None, int8_rowwise),
}


class RoundedLinears(TorchFunctionMode):
    def __init__(self, round_input, round_weight):
        super().__init__()
        self.round_input, self.round_weight = round_input, round_weight

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.linear:
            return func(*args, **kwargs)
        x, w, *rest = args
        bias = rest[0] if rest else kwargs.get("bias")
        with torch._C.DisableTorchFunction():
            x = self.round_input(x) if self.round_input else x
            w = self.round_weight(w) if self.round_weight else w
            return F.linear(x, w, bias)


def flop_shares() -> dict:
    unet = build_unet_on_meta(UNET_PRESETS["stage2_512"]).eval()
    with torch.device("meta"):
        sample, audio = torch.randn(2, 13, 16, 64, 64), torch.randn(32, 50, 384)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, torch.tensor(500.0, device="meta"), audio)
    total = counter.get_total_flops()
    per_op = collections.Counter({str(op): n for op, n in counter.get_flop_counts()["Global"].items()})
    return {"total_tflop": round(total / 1e12, 2),
            "share": {op: round(n / total, 3) for op, n in per_op.most_common()},
            "note": "addmm and mm are the linears (8-bit candidates); bmm is attention's q k^T and p v; "
                    "convolution is the ResNet and in/out convs"}


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return round(10 * math.log10(reference.pow(2).mean().item() / (reference - other).pow(2).mean().item()), 1)


def accuracy(timesteps: list[float]) -> dict:
    torch.manual_seed(0)
    unet = random_unet(UNET_PRESETS["stage2"], seed=5).eval()
    g = torch.Generator().manual_seed(0)
    sample, audio = torch.randn(2, 13, 4, 32, 32, generator=g), torch.randn(8, 50, 384, generator=g)
    out: dict = {}
    for t in timesteps:
        t_tensor = torch.tensor(t)
        with torch.no_grad():
            started = time.perf_counter()
            reference = unet(sample, t_tensor, audio)
            row = {"plain_forward_s": round(time.perf_counter() - started, 1)}
            for name, (round_input, round_weight) in VARIANTS.items():
                with RoundedLinears(round_input, round_weight):
                    row[f"{name}_snr_db"] = snr_db(reference, unet(sample, t_tensor, audio))
        out[str(int(t))] = row
        print(t, row, flush=True)
    return out


def _psnr_255(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) * 127.5).pow(2).mean().item()  # [-1, 1] pixels on the 0-255 scale
    return round(10 * math.log10(255.0**2 / mse), 2) if mse > 0 else math.inf


def chunk_fidelity() -> dict:
    from fastsync.accel.predictor import PlainPredictor
    from fastsync.components import make_scheduler, random_vae
    from fastsync.denoise import ChunkDenoiser, SamplingOptions
    from fastsync.face.mask import mask_for_resolution

    unet = random_unet(UNET_PRESETS["stage2"], seed=5).eval()
    vae = random_vae("full", seed=3)
    mask = torch.from_numpy(mask_for_resolution(256)).float()
    g = torch.Generator().manual_seed(1)
    faces = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8, generator=g)
    audio = torch.randn(4, 50, 384, generator=g)

    def run(rounding) -> tuple[torch.Tensor, float]:
        plain = PlainPredictor(unet, 3)

        def predict(*args):
            if rounding is None:
                return plain(*args)
            with RoundedLinears(*rounding):
                return plain(*args)

        denoiser = ChunkDenoiser(predict, vae, make_scheduler(), mask, SamplingOptions(num_frames=4),
                                 device=torch.device("cpu"), dtype=torch.float32, on_chunk_start=plain.reset)
        started = time.perf_counter()
        with torch.inference_mode():
            out = denoiser(faces, audio)
        return out, round(time.perf_counter() - started, 1)

    reference, seconds = run(None)
    mouth = mask < 1  # the pixels the model regenerates
    out: dict = {"plain_chunk_s": seconds}
    for name, rounding in VARIANTS.items():
        pixels, _ = run(rounding)
        out[name] = {"face_psnr_db": _psnr_255(pixels, reference),
                     "mouth_psnr_db": _psnr_255(pixels[..., mouth], reference[..., mouth])}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/quant_error_cpu.json"))
    parser.add_argument("--loop", action="store_true", help="also run whole chunks (about 15 min on 2 cores)")
    parser.add_argument("--timesteps", type=float, nargs="+", default=[981.0, 500.0, 21.0])
    args = parser.parse_args()
    results = {"environment": environment(), "flops_512px_cfg_16_frames": flop_shares(),
               "sample": "full-size UNet (1.5/1.6 topology), random weights, fp32, 2 x 4 frames at 256 px",
               "snr_against_plain_fp32_by_timestep": accuracy(args.timesteps)}
    if args.loop:
        results["chunk_against_plain_fp32"] = chunk_fidelity()
    save(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
