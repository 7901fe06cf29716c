"""UNet micro-benchmark: one CFG forward (2 x 16 frames at 512 px), full-size random weights.

Variants, side by side in one process:
  eager          fp16, contiguous, SDPA   (what the reference's eager fp16 does)
  eager_cl       + channels_last_3d activations and weights, memory-efficient temporal attention
  compiled_cl    + regional torch.compile of ResNet / transformer / motion blocks
  compiled_graph + the forward captured as a CUDA graph
  compiled_graph[5d_glue] (--glue-5d) the same graph with the 5D skip concatenations and upsampling
  compiled_graph[blas=<lib>] (--blas) the same graph captured with another BLAS library preferred
  compiled_graph_max_autotune (--max-autotune) the same, its regions compiled in inductor's
                 max-autotune mode
  compiled_graph[looped_reductions] (--no-persistent-reductions) the regions compiled again
                 on a fresh copy with inductor's persistent reductions off
  compiled_graph[cfg_pair] (--cfg-pair) the same regions called with cfg_pair=True: the CFG
                 pair's equal halves computed once up to the first cross-attention, the
                 zero-audio rows' cross-attention given as its bias (fast mode's default since
                 2026-12-03; compiled_graph is the forward without it)
  deepcache_full, deepcache_shallow (--deepcache) the job's own two graphs (FastPredictor,
                 interval 3): the full step that keeps the deep features, and the cached step;
                 with --cfg-pair also deepcache_full[cfg_pair] and deepcache_shallow[cfg_pair]
  compiled_graph[bias_epilogue] (--bias-in-epilogue) a fresh copy whose regions' linear
                 layers keep their bias in cuBLAS's epilogue (fast mode adds it in the kernel
                 that reads their output since 2026-12-06; until then the option was
                 --split-linear-bias, timing compiled_graph[split_bias] against the epilogue)
  compiled_graph[glue_eager] (--glue-eager) a fresh copy whose upsamplers and head run eagerly
                 between the compiled blocks (fast mode compiles them since 2026-12-06)
  compiled_graph[gemm_templates_N] (--gemm-templates N) a fresh copy whose GEMMs inductor tunes
                 among cuBLAS and N Triton templates with their epilogues (N = 4 on an H100,
                 2026-12-06: 95.7 against 94.2 ms, Triton won only tiny GEMMs)
  compiled_graph[conv1x1_mm] (--conv-1x1-as-mm) a fresh copy with inductor's conv_1x1_as_mm
                 (measured as [split_bias+conv1x1_mm] on 2026-12-06: no gain)
  compiled_graph[coordinate_descent] (--coordinate-descent) a fresh copy whose generated
                 kernels (the norms and pointwise ops) inductor tunes by coordinate descent
                 over their block sizes and warps on their first launch
  compiled_graph[pdl] (--pdl) a fresh copy whose generated kernels use programmatic dependent
                 launch (Hopper: a kernel starts while the one before it ends, and waits only
                 where it reads that one's output)
The inputs are a CFG pair as the denoiser builds it (equal latent halves, [zero audio,
audio]); the runs before 2026-12-03 took random halves, which times the same kernels.
With --glue-ops, the compiled forward's other ATen ops by input shapes, inside regions or between.
Also: each variant's peak memory, and the top CUDA ops of the eager and compiled forwards
(a whole chunk, VAE included, is timed by bench_cold_start and bench_e2e; --deepcache gives
the UNet's share of it: 20 steps as full and cached steps).

    python bench/bench_unet.py --out bench/results/unet_h100.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch

from bench.common import UNET_FORWARD_TFLOP, cuda_time, environment, save
from fastsync.accel.graphs import GraphedCall
from fastsync.accel.setup import compile_unet, keep_channels_last_between_blocks, swap_in_unet_regions
from fastsync.config import UNET_PRESETS
from fastsync.engine import FastOptions
from fastsync.models.motion_module import TemporalSelfAttention
from fastsync.models.loading import random_unet


# Fresh copies with one of fast mode's switches off, by flag:
# (variant, FastOptions field, what the copy does).
SWITCHED_OFF = {
    "--pytorch-group-norm": ("compiled_graph[pytorch_gn]", "column_group_norm",
                             "whose norms inside the regions stay PyTorch's GroupNorm (until 2026-12-04 they were; "
                             "fast mode computes them from per-channel moments, fastsync.accel.group_norm)"),
    "--bias-in-epilogue": ("compiled_graph[bias_epilogue]", "split_linear_bias",
                           "whose regions' linear layers keep their bias in cuBLAS's epilogue"),
    "--glue-eager": ("compiled_graph[glue_eager]", "compile_glue",
                     "whose upsamplers and head run eagerly between the compiled blocks"),
}

# Fresh copies compiled with one inductor setting that fast mode leaves at its default:
# flag -> (variant, inductor config patched while the regions compile, what it is).
INDUCTOR_VARIANTS = {
    # the transformers' proj_in/proj_out (1x1 convolutions) as GEMMs, their bias fused into
    # the kernel that reads their output, as the linear layers' is
    "--conv-1x1-as-mm": ("compiled_graph[conv1x1_mm]", {"conv_1x1_as_mm": True},
                         "with inductor's conv_1x1_as_mm (the transformers' proj_in/proj_out as GEMMs)"),
    # the norms and pointwise kernels are about 21 ms of the forward, each near but not at
    # its bytes' time (bench/results/README.md, unet_h200_tail.json)
    "--coordinate-descent": ("compiled_graph[coordinate_descent]", {"coordinate_descent_tuning": True},
                             "compiled with inductor's coordinate_descent_tuning of its generated kernels; "
                             "compile_s includes the tuning"),
    # about 560 generated kernels a forward, most a few to tens of microseconds: the gap
    # between two of them is a visible share
    "--pdl": ("compiled_graph[pdl]", {"triton.enable_pdl": True},
              "whose generated kernels use programmatic dependent launch (inductor's triton.enable_pdl)"),
}


def inputs(dtype, frames=16, size=64):
    """One CFG pair: (2, 13, F, size, size) with equal halves, audio (2F, 50, 384) = [zeros, audio]."""
    g = torch.Generator(device="cuda").manual_seed(0)
    half = torch.randn(1, 13, frames, size, size, generator=g, device="cuda", dtype=dtype)
    audio = torch.randn(frames, 50, 384, generator=g, device="cuda", dtype=dtype)
    t = torch.tensor(501, device="cuda")
    return torch.cat([half, half]), t, torch.cat([torch.zeros_like(audio), audio])


def top_ops(fn, n=15) -> list[dict]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)[:n]
    return [{"op": e.key[:90], "calls": e.count, "cuda_ms": round(e.self_device_time_total / 1e3, 2)} for e in rows]


GEMM_AND_ATTENTION = ("mm", "addmm", "bmm", "convolution", "cudnn_convolution", "_scaled_dot_product",
                      "short_attention")


def in_compiled_region(event) -> bool:
    """Whether a profiler event ran under a compiled graph's call (inductor marks each call)."""
    parent = event.cpu_parent
    while parent is not None:
        if "Compiled" in parent.name:
            return True
        parent = parent.cpu_parent
    return False


def glue_ops(fn, n=25, device: str = "cuda") -> list[dict]:
    """The forward's other ATen ops (copies, concatenations, upsampling, pointwise work that
    inductor did not take) by name and input shapes, each marked as run between the compiled
    regions or inside one (a fallback), with the device time under them (CPU time on a CPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    totals: dict[tuple, list] = {}
    for event in prof.events():
        if not event.name.startswith("aten::") or any(g in event.name for g in GEMM_AND_ATTENTION):
            continue
        spent = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
        if spent <= 0:
            continue
        key = (event.name, str(event.input_shapes)[:160], in_compiled_region(event))
        row = totals.setdefault(key, [0, 0.0])
        row[0] += 1
        row[1] += spent
    rows = sorted(totals.items(), key=lambda kv: kv[1][1], reverse=True)[:n]
    return [{"op": name, "shapes": shapes, "inside_region": inside, "calls": calls, "ms": round(us / 1e3, 3)}
            for (name, shapes, inside), (calls, us) in rows]


def set_motion_attention(unet, backend: str) -> None:
    for module in unet.modules():
        if isinstance(module, TemporalSelfAttention):
            module.backend = backend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/unet_h100.json"))
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--variants", default="eager,eager_cl,compiled_graph",
                        help="eager_cl is optional; compiled_cl is timed on the way to compiled_graph")
    parser.add_argument("--motion-attention", default=FastOptions().motion_attention,
                        help="comma-separated temporal attention backends; the first is the fast variants' "
                             "own, each further one adds a compiled_graph[<backend>] variant")
    parser.add_argument("--max-autotune", action="store_true",
                        help="a compiled_graph_max_autotune variant: the same regions compiled in "
                             "inductor's max-autotune mode (its GEMM/conv templates timed against cuBLAS/cuDNN)")
    parser.add_argument("--glue-5d", action="store_true",
                        help="a compiled_graph[5d_glue] variant: the skip concatenations and upsampling as "
                             "the 5D calls of before 2026-12-03 (cat_channels, upsample_nearest), same regions")
    parser.add_argument("--glue-ops", action="store_true",
                        help="also list the compiled forward's ATen ops other than GEMMs, convolutions and "
                             "attention (copies, cat, upsampling) by input shapes, inside a region or between")
    parser.add_argument("--deepcache", action="store_true",
                        help="deepcache_full and deepcache_shallow variants: the job's FastPredictor graphs, "
                             "and the UNet seconds of one 20-step chunk made of them")
    parser.add_argument("--blas", default="",
                        help="comma-separated BLAS libraries (cublaslt, ck, ...): each adds a "
                             "compiled_graph[blas=<lib>] variant, its graph captured with that library preferred")
    parser.add_argument("--no-persistent-reductions", action="store_true",
                        help="a compiled_graph[looped_reductions] variant: the same regions compiled on a fresh copy "
                             "with inductor's persistent reductions off (every norm a looped reduction)")
    for flag, (name, switch, what) in SWITCHED_OFF.items():
        parser.add_argument(flag, action="store_true",
                            help=f"a {name} variant: a fresh copy {what} (fast mode's FastOptions.{switch} off)")
    parser.add_argument("--top-ops", type=int, default=15, help="how many CUDA ops the profiles list")
    for flag, (name, _, what) in INDUCTOR_VARIANTS.items():
        parser.add_argument(flag, action="store_true",
                            help=f"a {name} variant: a fresh copy {what} (fast mode leaves it off)")
    parser.add_argument("--gemm-templates", default="",
                        help="comma-separated config counts N: each adds a compiled_graph[gemm_templates_N] variant, "
                             "a fresh copy whose regions' GEMMs inductor tunes at compile time among cuBLAS and its "
                             "first N Triton templates (which can take the pointwise work after them into their "
                             "epilogue); convolutions stay on cuDNN. compile_s is the tuning's cost")
    parser.add_argument("--cfg-pair", action="store_true",
                        help="a compiled_graph[cfg_pair] variant (and DeepCache ones with --deepcache): "
                             "the same regions called with cfg_pair=True")
    parser.add_argument("--autotune-gemm-only", action="store_true",
                        help="with --max-autotune: convolutions stay on cuDNN (ATen), only GEMMs are tuned")
    args = parser.parse_args()
    # fast mode's setting (the runs up to 2026-12-02 had it on; bench_cudnn found the same
    # per-call times either way)
    torch.backends.cudnn.benchmark = FastOptions().cudnn_benchmark
    dtype = torch.float16
    results: dict = {"environment": environment(), "tflop_per_forward": UNET_FORWARD_TFLOP, "variants": {}}

    started = time.perf_counter()
    unet = random_unet(UNET_PRESETS["stage2_512"], seed=0, device="cuda", dtype=dtype).eval()
    results["build_s"] = round(time.perf_counter() - started, 2)
    sample, t, audio = inputs(dtype)

    def record(name, fn, extra=None):
        torch.cuda.reset_peak_memory_stats()
        timing = cuda_time(fn)
        timing["tflops"] = round(UNET_FORWARD_TFLOP / timing["median_s"], 1)
        timing["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        timing.update(extra or {})
        results["variants"][name] = timing
        save(results, args.out)
        rate = "" if timing["tflops"] is None else f"{timing['tflops']:6.1f} TFLOP/s"
        print(f"{name:16s} {timing['median_s'] * 1e3:8.1f} ms  {rate}  "
              f"peak {timing['peak_allocated_gb']} GB", flush=True)

    with torch.no_grad():
        reference_out = unet(sample, t, audio).float()
        record("eager", lambda: unet(sample, t, audio))
        results["top_ops_eager"] = top_ops(lambda: unet(sample, t, audio), args.top_ops)
        for row in results["top_ops_eager"]:
            print(f"   {row['cuda_ms']:8.2f} ms {row['calls']:5d}  {row['op']}")

        backends = args.motion_attention.split(",")
        if "triton-short" in backends:
            from fastsync.accel import short_attention

            short_attention.register()
        fast = FastOptions()
        unet_cl = fast_copy(unet, backends[0], fast)
        results["motion_attention"] = backends[0]
        sample_cl = sample.contiguous(memory_format=torch.channels_last_3d)
        out = unet_cl(sample_cl, t, audio).float()
        err = rel_err(out, reference_out)
        if "eager_cl" in args.variants:
            record("eager_cl", lambda: unet_cl(sample_cl, t, audio), {"rel_err_vs_eager": err})

        if not args.skip_compile:
            n = compile_unet(unet_cl, fast)
            started = time.perf_counter()
            out = unet_cl(sample_cl, t, audio).float()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - started
            err = rel_err(out, reference_out)
            record("compiled_cl", lambda: unet_cl(sample_cl, t, audio),
                   {"rel_err_vs_eager": err, "compile_s": round(compile_s, 1), "regions": n})
            results["top_ops_compiled_cl"] = top_ops(lambda: unet_cl(sample_cl, t, audio), args.top_ops)
            for row in results["top_ops_compiled_cl"]:
                print(f"   {row['cuda_ms']:8.2f} ms {row['calls']:5d}  {row['op']}")
            if args.glue_ops:
                results["glue_ops_compiled_cl"] = glue_ops(lambda: unet_cl(sample_cl, t, audio))
                for row in results["glue_ops_compiled_cl"]:
                    print(f"   {row['ms']:8.3f} ms {row['calls']:5d}  {row['op']} {row['shapes'][:70]} "
                          f"{'in region' if row['inside_region'] else 'between'}")
                save(results, args.out)

        started = time.perf_counter()
        graph = GraphedCall(lambda s, tt, a: unet_cl(s, tt, a), (sample_cl, t, audio))
        capture_s = time.perf_counter() - started
        out = graph(sample_cl, t, audio).float()
        err = rel_err(out, reference_out)
        record("compiled_graph" if not args.skip_compile else "eager_cl_graph",
               lambda: graph(sample_cl, t, audio), {"rel_err_vs_eager": err, "capture_s": round(capture_s, 1)})
        first_out = out

        def regraph(name: str, diff_key: str, **call_kwargs) -> None:
            """compiled_graph captured again after a change around the same regions (same
            weights, same inputs), recorded with its difference from the first capture.
            The capture's warm-up compiles the shapes new to it (capture_s)."""
            nonlocal graph
            graph = None  # the previous capture's memory goes back first
            started = time.perf_counter()
            graph = GraphedCall(lambda s, tt, a: unet_cl(s, tt, a, **call_kwargs), (sample_cl, t, audio))
            capture_s = time.perf_counter() - started
            out = graph(sample_cl, t, audio).float()
            record(name, lambda captured=graph: captured(sample_cl, t, audio),
                   {"rel_err_vs_eager": rel_err(out, reference_out), diff_key: rel_err(out, first_out),
                    "capture_s": round(capture_s, 1)})

        for backend in backends[1:]:
            set_motion_attention(unet_cl, backend)
            regraph(f"compiled_graph[{backend}]", f"rel_diff_vs_{backends[0]}")
        set_motion_attention(unet_cl, backends[0])
        default_blas = torch.backends.cuda.preferred_blas_library()
        for library in filter(None, args.blas.split(",")):
            torch.backends.cuda.preferred_blas_library(library)
            regraph(f"compiled_graph[blas={library}]", "rel_diff_vs_default_blas")
            torch.backends.cuda.preferred_blas_library(default_blas)
        if args.glue_5d:  # only the glue between the regions changes, so nothing compiles again
            from fastsync.models import resnet

            frames_last, resnet._frames_last = resnet._frames_last, lambda *tensors: False
            try:
                regraph("compiled_graph[5d_glue]", "rel_diff_vs_4d_glue")
            finally:
                resnet._frames_last = frames_last
        if args.cfg_pair:
            regraph("compiled_graph[cfg_pair]", "rel_diff_vs_plain_pair", cfg_pair=True)
            if not args.skip_compile:
                results["top_ops_compiled_cfg_pair"] = top_ops(lambda: unet_cl(sample_cl, t, audio, cfg_pair=True),
                                                              args.top_ops)
        graph = None  # the variants below capture graphs of their own
        if args.deepcache:
            deepcache_variants(results, record, unet_cl, (sample_cl, t, audio), first_out)
            if args.cfg_pair:
                deepcache_variants(results, record, unet_cl, (sample_cl, t, audio), first_out, cfg_pair=True)
        if args.no_persistent_reductions and not args.skip_compile:
            import torch._inductor.config as inductor_config

            # GroupNorm over (C/G, H, W) of a 64x64 map is a 40960-element reduction per
            # group; a persistent kernel holds all of it at once
            with inductor_config.patch({"triton.persistent_reductions": False}):
                fresh_variant(results, record, unet, (sample_cl, t, audio), reference_out, first_out, backends[0],
                              "compiled_graph[looped_reductions]")
        for flag, (name, switch, _) in SWITCHED_OFF.items():
            if getattr(args, flag[2:].replace("-", "_")) and not args.skip_compile:
                fresh_variant(results, record, unet, (sample_cl, t, audio), reference_out, first_out, backends[0],
                              name, fast=dataclasses.replace(FastOptions(), **{switch: False}))
        for count in filter(None, args.gemm_templates.split(",")):
            if not args.skip_compile:
                # torch 2.11's test_configs.max_mm_configs keeps the first N of inductor's
                # size-scaled template configs: max-autotune's full list took 5-44 s a shape
                fresh_variant(results, record, unet, (sample_cl, t, audio), reference_out, first_out, backends[0],
                              f"compiled_graph[gemm_templates_{count}]",
                              inductor={"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON,ATEN",
                                        "test_configs.max_mm_configs": int(count)})
        for flag, (name, config, _) in INDUCTOR_VARIANTS.items():
            if getattr(args, flag[2:].replace("-", "_")) and not args.skip_compile:
                missing = [key for key in config if not has_inductor_setting(key)]
                if missing:
                    results[name] = f"torch {torch.__version__} has no inductor setting {', '.join(missing)}"
                    print(results[name], flush=True)
                    continue
                fresh_variant(results, record, unet, (sample_cl, t, audio), reference_out, first_out, backends[0],
                              name, inductor=config)
        if args.max_autotune and not args.skip_compile:
            if args.autotune_gemm_only:
                import torch._inductor.config as inductor_config

                inductor_config.max_autotune_conv_backends = "ATEN"
                results["max_autotune_conv_backends"] = "ATEN"
            # inductor's GEMM and convolution templates timed against cuBLAS/cuDNN, with the
            # pointwise ops around them fused in: what they would take off (and cost to compile)
            fresh_variant(results, record, unet, (sample_cl, t, audio), reference_out, first_out, backends[0],
                          "compiled_graph_max_autotune", mode="max-autotune-no-cudagraphs")
    save(results, args.out)


def has_inductor_setting(key: str) -> bool:
    """Whether this torch's inductor config has `key` ("triton.enable_pdl": dotted)."""
    import torch._inductor.config as inductor_config

    node = inductor_config
    for part in key.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


def rel_err(out: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest deviation from `reference`, relative to its largest value."""
    return ((out - reference).abs().max() / reference.abs().max()).item()


def deepcache_variants(results: dict, record, unet_cl, call_args: tuple, first_out, steps: int = 20,
                       interval: int = 3, cfg_pair: bool = False) -> None:
    """Time the two graphs a job's FastPredictor captures, and what one chunk of `steps`
    steps spends in them (the rest of a chunk's time is the VAE and the scheduler)."""
    from fastsync.accel.predictor import FastPredictor

    predictor = FastPredictor(unet_cl, interval, channels_last=True, cuda_graphs=True, compiled=True,
                              num_frames=call_args[0].shape[2], cfg_pair=cfg_pair)
    full, shallow = predictor._graphs_for(*call_args)
    noise, deep = full(*call_args)
    tag = "[cfg_pair]" if cfg_pair else ""
    record(f"deepcache_full{tag}", lambda: full(*call_args),
           {"rel_diff_vs_compiled_graph": rel_err(noise.float(), first_out)})
    record(f"deepcache_shallow{tag}", lambda: shallow(*call_args, deep), {"tflops": None})
    full_steps = sum(predictor.cache.is_full_step(step) for step in range(steps))
    variants = results["variants"]
    full_s, shallow_s = variants[f"deepcache_full{tag}"]["median_s"], variants[f"deepcache_shallow{tag}"]["median_s"]
    results[f"deepcache_chunk{tag}"] = {
        "steps": steps, "interval": interval, "full_steps": full_steps, "cached_steps": steps - full_steps,
        "unet_s": round(full_steps * full_s + (steps - full_steps) * shallow_s, 4),
        "shallow_over_full": round(shallow_s / full_s, 3)}
    print(f"one chunk's UNet{tag}: {results[f'deepcache_chunk{tag}']}", flush=True)


def fast_copy(unet, backend: str, fast: FastOptions):
    """A copy of `unet` laid out as fast set-up lays it out on a GPU (channels_last between
    blocks), with `backend` as the motion modules' attention and the layers inside the
    regions swapped as `fast` says (FastOptions.column_group_norm, split_linear_bias, and
    the head with compile_glue). Compile it with accel.setup.compile_unet."""
    unet_cl = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    keep_channels_last_between_blocks(unet_cl)
    set_motion_attention(unet_cl, backend)
    swap_in_unet_regions(unet_cl, fast)
    return unet_cl


def fresh_variant(results: dict, record, unet, call_args: tuple, reference_out, first_out, backend: str,
                  name: str, *, mode: str | None = None, fast: FastOptions | None = None,
                  inductor: dict | None = None) -> None:
    """The fast variant again on a fresh copy of `unet`, its regions compiled in `mode`, then
    graphed; recorded as `name` beside `compiled_graph`, with its compile time and its
    difference from it. The first copy stays alive, so the peak holds one UNet more.
    `inductor`: config values patched while the regions compile (their first call)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # the regions compile again, not from dynamo's cache of the first copy
    fast = fast or FastOptions()
    copy_ = fast_copy(unet, backend, fast)
    n = compile_unet(copy_, fast, mode=mode)
    started = time.perf_counter()
    with inductor_config.patch(inductor or {}):
        copy_(*call_args)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - started
    graph = GraphedCall(lambda s, tt, a: copy_(s, tt, a), call_args)
    out = graph(*call_args).float()
    record(name, lambda: graph(*call_args),
           {"rel_err_vs_eager": rel_err(out, reference_out), "rel_diff_vs_compiled_graph": rel_err(out, first_out),
            "compile_s": round(compile_s, 1), "regions": n})
    results[f"top_ops_{name}"] = top_ops(lambda: copy_(*call_args))


if __name__ == "__main__":
    main()
