"""The web UI: the job logic on its own (fastsync.app.jobs), the gradio page served on a
localhost port and driven through gradio_client, and `fastsync app` on the command line.

Every job runs the tiny random models on the CPU with 2 DDIM steps on a 10-frame clip
cut from the demo assets; one engine serves the whole module, as it serves the app.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from job_clips import expected_frames, inspect, source_frames, trim_wav, wav_samples, write_clip

from fastsync import cli
from fastsync.api import LipSync
from fastsync.app.jobs import (
    RANDOM_WEIGHTS_NOTE,
    JobRunner,
    clicked_point,
    face_input,
    face_point,
    first_frame,
    output_options,
    poll_progress,
    sampling_options,
    user_message,
)
from fastsync.denoise import SamplingOptions
from fastsync.errors import FastsyncError, InputError
from fastsync.output import OutputOptions
from fastsync.pipeline import JobReport

torch.set_num_threads(2)
# Raised inside gradio's queue by the pandas it brings along: nothing this project can fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

QUICK = SamplingOptions(steps=2)


@pytest.fixture(scope="module")
def engine():
    return LipSync.load(random_weights=True, model_size="tiny", device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, assets_dir):
    """A 10-frame face clip and two tracks of 0.6 s and 0.8 s (both loop the video)."""
    tmp = tmp_path_factory.mktemp("app_inputs")
    video = write_clip(tmp / "talk.mp4", source_frames(assets_dir / "demo1_video.mp4", 10, size=(540, 960)))
    short = trim_wav(assets_dir / "demo2_audio.wav", tmp / "short.wav", 0.6)
    longer = trim_wav(assets_dir / "demo3_audio.wav", tmp / "longer.wav", 0.8)
    not_a_video = tmp / "notes.mp4"
    not_a_video.write_text("these are meeting notes, not a video\n")
    return video, short, longer, not_a_video


@pytest.fixture
def runner(engine, tmp_path):
    return JobRunner(engine, work_dir=tmp_path / "work")


def check_video(path, audio):
    frames = expected_frames(wav_samples(audio))
    written = inspect(path)
    assert (written.video_codec, written.audio_codec, written.frames) == ("h264", "aac", frames)


# -- the job logic, without gradio ------------------------------------------------------------


def test_each_job_gets_its_own_output_and_report(runner, clip, detections):
    video, short, longer, _ = clip
    seen = []
    first = runner.run(video, short, QUICK, progress=lambda fraction, text: seen.append((fraction, text)))
    check_video(first.output, short)
    assert first.output.name == "talk_synced.mp4" and first.output.parent.parent == runner.jobs_dir
    frames = expected_frames(wav_samples(short))
    assert first.text.startswith(f"{frames} frames in ") and "talk_synced.mp4" in first.text
    assert "unet-denoise-loop" in first.text and str(first.output.parent) not in first.text
    # The bar starts at 0 and ends with every stage (align, denoise, write) at the last frame.
    assert seen[0] == (0.0, "reading audio")
    assert seen[-1][0] == 1.0 and seen[-1][1].count(f"{frames}/{frames}") == 3
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    assert len(detections) == 10

    detections.clear()
    second = runner.run(video, longer, QUICK)
    check_video(second.output, longer)
    assert second.output.parent != first.output.parent and first.output.is_file()
    assert len(detections) == 0, "the same video again should take its faces from the landmark cache"
    assert len(list(runner.landmarks_dir.glob("*.json"))) == 1


def test_a_job_may_take_the_face_nearest_a_point(runner, clip, detections):
    """The face field: its landmarks are kept apart from the largest face's, per video."""
    video, short, _, _ = clip
    runner.run(video, short, QUICK)
    detections.clear()
    near = runner.run(video, short, QUICK, face_near=face_point(" 270, 400 "))
    check_video(near.output, short)
    assert len(detections) == 10, "faces near a point are not the largest faces' cached landmarks"
    names = sorted(path.name for path in runner.landmarks_dir.glob("*.json"))
    assert len(names) == 2 and names[0].endswith("-near270_400.json")  # "-" sorts before "."
    assert face_point("") is None and face_point(None) is None
    with pytest.raises(InputError, match="face near 'left' is not a point"):
        face_point("left")


def test_bad_inputs_name_the_file_and_leave_no_job_folder(runner, clip):
    video, short, _, not_a_video = clip
    with pytest.raises(InputError) as caught:
        runner.run(not_a_video, short, QUICK)
    message = user_message(caught.value)
    assert message.startswith("notes.mp4: not a readable media file") and str(not_a_video.parent) not in message
    with pytest.raises(InputError, match="no audio file was given"):
        runner.run(video, None, QUICK)
    with pytest.raises(InputError, match="no video or photo file was given"):
        runner.run("", short, QUICK)
    with pytest.raises(InputError, match="missing.wav"):
        runner.run(video, short.parent / "missing.wav", QUICK)
    assert list(runner.jobs_dir.iterdir()) == []


def test_the_page_takes_a_video_or_a_photo_but_not_both(clip):
    video = clip[0]
    assert face_input(video, None) == video and face_input(None, video) == video
    assert face_input("", None) is None  # the job then says that nothing was given
    with pytest.raises(InputError, match="both a video and a photo were given"):
        face_input(video, video)


def test_old_job_folders_make_room_for_new_ones(engine, tmp_path):
    runner = JobRunner(engine, work_dir=tmp_path, keep_jobs=2)
    folders = [runner.new_job_dir() for _ in range(4)]
    assert sorted(runner.jobs_dir.iterdir()) == folders[2:]


def test_bad_sampling_values_are_user_errors():
    assert sampling_options(20.0, 1.5, 1247.0, 3.0) == SamplingOptions(20, 1.5, 1247, 3)
    with pytest.raises(FastsyncError, match="steps must be >= 1"):
        sampling_options(0, 1.5, 1247, 3)
    with pytest.raises(FastsyncError, match="bad sampling option"):
        sampling_options(None, 1.5, 1247, 3)


def test_progress_is_passed_on_from_the_calling_thread():
    """The job reports from its own thread; the reporter must see it on the caller's."""
    caller = threading.get_ident()
    reported = []
    seen = threading.Event()

    def report(fraction, text):
        reported.append((fraction, text, threading.get_ident()))
        seen.set()

    def job(keep):
        assert threading.get_ident() != caller
        keep(0.5, "half way")
        assert seen.wait(timeout=60), "the caller never passed the progress on"
        return "done"

    assert poll_progress(job, report, every=0.01) == "done"
    assert reported and all(r == (0.5, "half way", caller) for r in reported)

    def failing(keep):
        raise InputError("broken", "x.mp4")

    with pytest.raises(InputError, match="x.mp4: broken"):
        poll_progress(failing, report, every=0.01)


# -- the page, served and called through gradio_client ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """Serves a runner's app on a free localhost port (uploads kept under tmp_path) and
    returns a client for it; every app is closed at the end of the test."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    from gradio_client import Client

    from fastsync.app.ui import build_app

    apps = []

    def start(runner: JobRunner) -> Client:
        app = build_app(runner)
        app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        apps.append(app)
        return Client(app.local_url, verbose=False, download_files=str(tmp_path / "downloads"))

    yield start
    for app in apps:
        app.close()


def test_page_says_random_weights_and_runs_one_job_at_a_time(runner):
    import gradio as gr

    from fastsync.app.ui import _clicked, build_app

    app = build_app(runner)
    notes = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown)]
    assert any(RANDOM_WEIGHTS_NOTE in note for note in notes)
    (job,) = [fn for fn in app.fns.values() if fn.api_name == "lipsync"]
    assert job.concurrency_limit == 1
    # the face picker's helpers: a click on the preview fills the face field; they stay out
    # of the job queue and out of the API
    helpers = [fn for fn in app.fns.values() if fn.fn in (first_frame, _clicked)]
    assert sorted(fn.fn.__name__ for fn in helpers) == ["_clicked", "first_frame", "first_frame"]
    assert all(fn.queue is False and fn.api_visibility == "private" for fn in helpers)


def test_the_face_picker_shows_the_first_frame_upright_and_reads_a_click(clip, tmp_path):
    from PIL import Image

    video, _, _, not_a_video = clip
    frame = first_frame(video)
    assert frame.shape == (960, 540, 3) and frame.dtype == np.uint8
    sideways = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # turn clockwise to view
    Image.fromarray(np.ascontiguousarray(np.rot90(frame))).save(sideways, exif=exif)
    assert first_frame(sideways).shape == (960, 540, 3)  # upright, in the pixels --face-near counts
    assert first_frame(None) is None and first_frame(not_a_video) is None
    assert clicked_point([720.4, 480.6]) == "720,481"
    assert face_point(clicked_point((12, 34))) == (12.0, 34.0)


def test_lipsync_through_the_served_page(serve, runner, clip):
    """Two users at once: both jobs wait their turn and each gets its own video back."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = serve(runner)
    video, short, longer, not_a_video = clip
    jobs = [client.submit(handle_file(str(video)), handle_file(str(audio)), 2, 1.5, 1247, 3, api_name="/lipsync")
            for audio in (short, longer)]
    for job, audio in zip(jobs, (short, longer)):
        shown, download, text = job.result(timeout=300)
        check_video(shown, audio)
        check_video(download, audio)
        assert text.startswith(f"{expected_frames(wav_samples(audio))} frames in ")

    with pytest.raises(AppError, match="notes.mp4: not a readable media file"):
        client.predict(handle_file(str(not_a_video)), handle_file(str(short)), 2, 1.5, 1247, 3, api_name="/lipsync")


def test_a_photo_through_the_served_page(serve, runner, clip, tmp_path):
    """A photo in the Photo tab, in the video's place: a video as long as the audio comes back
    (what its frames show is tests/test_cli_run.py's photo test)."""
    from gradio_client import handle_file

    client = serve(runner)
    _, short, _, _ = clip
    photo = tmp_path / "face.png"
    assert cv2.imwrite(str(photo), cv2.cvtColor(source_frames(clip[0], 1)[0], cv2.COLOR_RGB2BGR))
    shown, download, text = client.predict(None, handle_file(str(short)), 2, 1.5, 1247, 3, handle_file(str(photo)),
                                           api_name="/lipsync")
    check_video(download, short)
    assert text.startswith(f"{expected_frames(wav_samples(short))} frames in ")


def test_output_controls_map_to_output_options():
    server = OutputOptions(audio="reference", crf=23)
    assert output_options(None, None, server) == server and output_options("", "", server) == server
    assert output_options("the audio file's own (its rate and channels)", 30.0, server) == OutputOptions("source", 30)
    assert output_options("reference", 12, OutputOptions()) == OutputOptions("reference", 12)  # an API caller's key
    for track, crf in (("loud", 18), ("source", 60), ("source", "best")):
        with pytest.raises(FastsyncError, match="bad output option|out of range|unknown output audio"):
            output_options(track, crf, server)


def test_the_page_writes_the_chosen_audio_track_and_quality(serve, runner, clip, tmp_path):
    """A 44.1 kHz stereo track: kept as it is by default, 16 kHz mono when asked; the crf
    the page sent is the one x264 wrote into the stream."""
    import wave

    from gradio_client import handle_file

    client = serve(runner)
    video, short, _, _ = clip
    with wave.open(str(short)) as r:
        mono = np.frombuffer(r.readframes(r.getnframes()), np.int16)
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        upsampled = np.interp(np.arange(int(mono.size * 44100 / 16000)) * 16000 / 44100, np.arange(mono.size), mono)
        w.writeframes(np.repeat(upsampled.astype(np.int16)[:, None], 2, axis=1).tobytes())
    for track, crf, rate in ((None, 30, 44100), ("16 kHz mono, as LatentSync writes it", None, 16000)):
        given = [track] if crf is None else [track, crf]  # left out, a control sends its default
        _, download, _ = client.predict(handle_file(str(video)), handle_file(str(stereo)), 2, 1.5, 1247, 3, None, None,
                                        *given, api_name="/lipsync")
        assert inspect(Path(download)).sample_rate == rate
        assert f"crf={18 if crf is None else crf}.0 ".encode() in Path(download).read_bytes()


class BlockingEngine:
    """Stands in for the engine: reports progress, then waits until the test has seen that
    progress on the client's side before it finishes (a copy of the input as the output)."""

    def __init__(self, engine: LipSync):
        self.components, self.load_seconds = engine.components, 0.0
        self.seen = threading.Event()

    def run(self, video, audio, output, *, on_progress, **options):
        on_progress("faces", 5, 10)
        assert self.seen.wait(timeout=120), "the client never saw the job's progress"
        shutil.copy(video, output)
        return JobReport(Path(output), 10, 1.0)


def test_the_page_shows_the_jobs_progress(serve, engine, tmp_path, clip):
    from gradio_client import handle_file

    video, short, _, _ = clip
    stand_in = BlockingEngine(engine)
    client = serve(JobRunner(stand_in, work_dir=tmp_path / "work"))
    job = client.submit(handle_file(str(video)), handle_file(str(short)), 2, 1.5, 1247, 3, api_name="/lipsync")
    while not job.done() and not stand_in.seen.is_set():
        units = job.status().progress_data or []
        if any(u.desc and "align faces 5/10" in u.desc for u in units):
            assert units[-1].progress == pytest.approx(5 / 30)  # 5 of 10 frames in one of three stages
            stand_in.seen.set()
        time.sleep(0.05)  # polling interval only: nothing is asserted on time
    shown, _, text = job.result(timeout=120)
    assert stand_in.seen.is_set() and Path(shown).read_bytes() == video.read_bytes()
    assert text.startswith("10 frames in 1.0 s")


# -- `fastsync app` ----------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit:  # argparse's --help
            code = exit.code
    return code, out.getvalue(), err.getvalue()


TINY = ["--random-weights", "--model-size", "tiny", "--device", "cpu"]


def test_app_help_lists_the_server_and_model_options():
    code, out, _ = run_cli(["app", "--help"])
    assert code == 0
    for option in ("--host", "--port", "--share", "--random-weights", "--checkpoint-dir", "--mode", "--face-backend"):
        assert option in out


def test_app_without_gradio_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError

    def no_load(options):
        raise AssertionError("the engine must not load when gradio is missing")

    monkeypatch.setattr(LipSync, "from_options", no_load)
    code, _, err = run_cli(["app", *TINY])
    assert code == 2 and "pip install 'fastsync[app]'" in err


def test_app_loads_the_engine_once_and_serves_on_the_given_address(engine, tmp_path, monkeypatch):
    import gradio as gr

    loads, launches, events = [], [], []
    monkeypatch.setattr(LipSync, "from_options", lambda options: loads.append(options) or engine)
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launches.append(kw) or events.append("launch"))
    # on a GPU the warm-up compiles; here it stands in, to show it comes before the page opens
    monkeypatch.setattr(engine, "warm_up", lambda *a, **k: events.append("warm") or {"warmup_compile_capture_s": 1.5})
    code, out, _ = run_cli(["app", *TINY, "--port", "7999", "--work-dir", str(tmp_path)])
    assert code == 0 and RANDOM_WEIGHTS_NOTE in out
    assert len(loads) == 1 and loads[0].random_weights and loads[0].model_size == "tiny"
    assert launches == [dict(server_name="127.0.0.1", server_port=7999, share=False, show_error=True)]
    assert events == ["warm", "launch"] and "warmed up in 1.5 s" in out
