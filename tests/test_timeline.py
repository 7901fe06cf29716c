"""fastsync.timeline: each chunk's span on the device, the idle time around them, and the
sentence that says what bounds a job. On a CPU the spans are the denoising calls
themselves; a fake clock makes them exact here. The CUDA path (events around the calls)
is exercised by bench_e2e and `fastsync profile` on a GPU, and by the last test below.
"""

from __future__ import annotations

import pytest
import torch

from fastsync import timeline


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cpu_spans_are_the_calls(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timeline.time, "perf_counter", clock)
    t = timeline.ChunkTimeline(torch.device("cpu"))
    assert t.as_dict(1.0) == {}  # no chunk denoised (a video without a face)
    t.begin()
    clock.now += 0.5  # the first chunk's faces
    with t.chunk():
        clock.now += 2.0
    clock.now += 0.25  # waiting for the next chunk
    with t.chunk():
        clock.now += 1.5
    clock.now += 0.75  # paste-back and the encoder's flush
    d = t.as_dict(5.0)
    assert [c["device"] for c in d["chunks"]] == [[0.5, 2.5], [2.75, 4.25]]
    assert [c["queued"] for c in d["chunks"]] == [[0.5, 2.5], [2.75, 4.25]]
    assert d["busy_s"] == 3.5 and d["idle_before_first_s"] == 0.5
    assert d["idle_between_s"] == 0.25 and d["idle_after_last_s"] == 0.75 and d["wall_s"] == 5.0
    t.begin()  # a second job starts from nothing
    assert t.as_dict(1.0) == {}


def test_summary_adds_up_to_the_wall():
    spans = [[0.4, 1.4], [1.4, 2.4], [3.0, 3.6]]
    s = timeline.summarize(spans, 4.0)
    assert s == {"busy_s": 2.6, "idle_before_first_s": 0.4, "idle_between_s": 0.6, "idle_after_last_s": 0.4,
                 "wall_s": 4.0}
    assert s["busy_s"] + s["idle_before_first_s"] + s["idle_between_s"] + s["idle_after_last_s"] == pytest.approx(4.0)


def test_the_verdict_names_what_bounds_the_job():
    # demo1 on an H100 with a slow host (bench/results/e2e_h100_session17_hosts.json)
    threads = {"busy_s": 17.13, "idle_before_first_s": 0.87, "idle_between_s": 3.16, "idle_after_last_s": 0.61,
               "wall_s": 21.77}
    processes = {"busy_s": 15.44, "idle_before_first_s": 0.54, "idle_between_s": 0.005,
                 "idle_after_last_s": 0.75, "wall_s": 16.74}
    text = timeline.verdict(threads, "GPU", "threads")
    assert "It waited 3.16 s between chunks" in text and "--host-processes" in text
    assert "first chunk" not in text and "flush" not in text  # 0.87 and 0.61 s: under 5 % of the wall
    text = timeline.verdict(threads, "GPU", "processes")
    assert "waited 3.16 s" in text and "--host-processes" not in text and "slower than the model" in text
    text = timeline.verdict(processes, "GPU", "processes")
    assert "busy 15.44 s of the 16.74 s job (92%)" in text and "the model's work bounds the job" in text
    assert "reference mode" in timeline.verdict(threads, "GPU", "sequential")
    # a tiny model on a CPU: the first chunk's face detection dominates, then the flush
    cpu = {"busy_s": 2.26, "idle_before_first_s": 4.85, "idle_between_s": 0.01, "idle_after_last_s": 0.4,
           "wall_s": 7.52}
    text = timeline.verdict(cpu, "CPU", "threads")
    assert "It waited 4.85 s before the first chunk" in text and text.index("4.85 s") < text.index("0.40 s")
    assert "--host-processes" not in text  # nothing waited between chunks


@pytest.mark.requires_cuda
def test_cuda_spans_are_when_the_gpu_ran_the_work():
    # A chunk whose kernel outlives its call: the call returns at once, the span ends with
    # the kernel. Then the GPU sits idle while the host sleeps, which must show between
    # the chunks. torch.cuda._sleep spins for a number of GPU clock cycles (~0.1 s here at
    # the H100's 1.98 GHz boost; the assertions hold at any clock above 0.5 GHz).
    import time

    t = timeline.ChunkTimeline(torch.device("cuda"))
    torch.cuda.synchronize()
    t.begin()
    with t.chunk():
        torch.cuda._sleep(200_000_000)
    torch.cuda.synchronize()
    time.sleep(0.3)  # the host stages of the next chunk
    with t.chunk():
        torch.cuda._sleep(200_000_000)
    d = t.as_dict(0.0)  # waits for the second kernel
    first, second = d["chunks"]
    assert first["device"][1] > first["queued"][1]  # the kernel ran on after the call returned
    assert first["device"][1] - first["device"][0] > 0.05
    assert d["idle_between_s"] >= 0.25  # the 0.3 s sleep, less timer granularity
    assert second["device"][0] >= first["device"][1] + 0.25
