"""When the model's device worked on each chunk, and what it waited for in between.

A job overlaps the host stages (decode and alignment, paste-back and encoding) with the
model's work on the device, chunk by chunk. The device's idle time says which side bounds
the job:
- before the first chunk: the pipeline fill (the first chunk's faces);
- between chunks: the device waited for the host stages, or for the thread that queues
  its work;
- after the last chunk: the drain (the last paste-back, the encoder's flush).

On a GPU each chunk's span comes from CUDA events recorded around its denoising, so it
is when the GPU ran the work, not when it was queued. On a CPU the work runs as it is
called, so the span is the call. `fastsync profile` reports the summary and what it
means; bench/bench_e2e.py records it for every run.
"""

from __future__ import annotations

import contextlib
import time

import torch

# Idle time (before, between or after the chunks) below this share of the job's wall is
# noise, not a bottleneck.
WAITING_SHARE = 0.05


class ChunkTimeline:
    """Spans of each chunk's work on `device`, in seconds from `begin()`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.started = 0.0
        self._origin = None
        self._marks: list[tuple[float, float, object, object]] = []  # queued from/to, start, end

    def begin(self) -> None:
        """At the job's start: the origin of every time in the summary."""
        self._marks = []
        self.started = time.perf_counter()
        if self.cuda:
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record()

    @contextlib.contextmanager
    def chunk(self):
        """Around one chunk's denoising call (the job's own thread)."""
        queued = time.perf_counter()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            yield
            start, end = queued, time.perf_counter()
        self._marks.append((queued, time.perf_counter(), start, end))

    def _seconds(self, mark) -> float:
        if self.cuda:
            return self._origin.elapsed_time(mark) / 1e3
        return mark - self.started

    def as_dict(self, wall_s: float) -> dict:
        """Each chunk's queuing and device spans, and the summary (`summarize`); {} if no
        chunk was denoised. On a GPU this waits for the last chunk's work to finish."""
        if not self._marks:
            return {}
        if self.cuda:
            torch.cuda.synchronize()
        chunks = [{"queued": [round(q - self.started, 3), round(d - self.started, 3)],
                   "device": [round(self._seconds(s), 3), round(self._seconds(e), 3)]}
                  for q, d, s, e in self._marks]
        return {"chunks": chunks, **summarize([c["device"] for c in chunks], wall_s)}


def summarize(spans: list[list[float]], wall_s: float) -> dict:
    """Busy and idle seconds of a job whose device worked in `spans` ([start, end] from the
    job's start, in order) over a wall of `wall_s`."""
    gaps = [max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:])]
    return {"busy_s": round(sum(end - start for start, end in spans), 3),
            "idle_before_first_s": round(spans[0][0], 3),
            "idle_between_s": round(sum(gaps), 3),
            "idle_after_last_s": round(max(0.0, wall_s - spans[-1][1]), 3),
            "wall_s": round(wall_s, 3)}


def verdict(summary: dict, device: str, host_stages: str) -> str:
    """What bounds the job, in a sentence or two, from `summarize`'s numbers. `host_stages`:
    "threads", "processes" or "sequential" (reference mode: nothing overlaps)."""
    wall, busy = summary["wall_s"], summary["busy_s"]
    text = f"The {device} was busy {busy:.2f} s of the {wall:.2f} s job ({busy / wall:.0%})"
    if host_stages == "sequential":
        return f"{text}; in reference mode the stages run one after another, so it waits for each of them."
    waits = [(summary["idle_before_first_s"], "before the first chunk, for its faces (decoding, face detection, "
                                              "alignment)"),
             (summary["idle_between_s"], "between chunks, for the host stages"),
             (summary["idle_after_last_s"], "after the last chunk, for the last paste-back and the encoder's flush")]
    waiting = WAITING_SHARE * wall
    long_waits = sorted((w for w in waits if w[0] > waiting), reverse=True)
    if not long_waits:
        return f"{text}: the model's work bounds the job. The op table shows where its time goes."
    text += ". It waited " + "; ".join(f"{seconds:.2f} s {what}" for seconds, what in long_waits) + "."
    if summary["idle_between_s"] > waiting:
        text += (" The host stages ran in threads of this process, where they share one interpreter lock with the "
                 "thread that drives the model: run them in worker processes (--host-processes, "
                 "FastOptions(host_processes=True))." if host_stages == "threads" else
                 " The host stages (decode, alignment, paste-back, encoding) are slower than the model here: "
                 "see their seconds above and the workers' op tables.")
    return text
