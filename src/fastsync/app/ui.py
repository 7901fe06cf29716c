"""The page: inputs and sampling controls on the left, the lip-synced video and the job's
report on the right. All the work is in fastsync.app.jobs; this file only lays out the
page and turns fastsync's errors into messages on it.
"""

from __future__ import annotations

import gradio as gr

from fastsync.app.jobs import (
    AUDIO_TRACKS,
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
from fastsync.errors import FastsyncError
from fastsync.output import OutputOptions

API_NAME = "lipsync"  # the endpoint gradio_client calls: Client(url).predict(..., api_name="/lipsync")
# Gradio's copies of uploads and outputs: swept hourly, removed after a day.
DELETE_CACHE = (3600, 86400)


def _lipsync_handler(runner: JobRunner):
    # `photo` and `face_near` come after the sampling values, so that API callers written
    # before them keep working; their default None makes them optional in gradio's client.
    # `audio_track` and `crf` likewise come last (empty: the server's `--output-audio`, `--crf`).
    def lipsync(video, audio, steps, guidance, seed, deepcache_interval, photo=None, face_near=None,
                audio_track=None, crf=None, progress=gr.Progress()):  # noqa: B008 (gradio finds its bar here)
        try:
            sampling = sampling_options(steps, guidance, seed, deepcache_interval)
            encoding = output_options(audio_track, crf, runner.engine.components.options.output)
            face, near = face_input(video, photo), face_point(face_near)
            result = poll_progress(lambda report: runner.run(face, audio, sampling, progress=report, face_near=near,
                                                             encoding=encoding),
                                   lambda fraction, text: progress(fraction, desc=text))
        except FastsyncError as exc:
            raise gr.Error(user_message(exc), duration=None, print_exception=False) from exc
        return str(result.output), str(result.output), result.text

    return lipsync


def _clicked(event: gr.SelectData) -> str:
    return clicked_point(event.index)


def _sampling_controls(defaults: SamplingOptions) -> list:
    with gr.Accordion("Sampling", open=True):
        steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="DDIM steps")
        guidance = gr.Slider(1.0, 5.0, value=defaults.guidance, step=0.1, label="Guidance scale (1 = no guidance)")
        seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
        deepcache = gr.Slider(0, 10, value=defaults.deepcache_interval, step=1, label="DeepCache interval (0 = off)")
    return [steps, guidance, seed, deepcache]


def _output_controls(defaults: OutputOptions) -> list:
    with gr.Accordion("Output", open=False):
        shown = {key: label for label, key in AUDIO_TRACKS.items()}
        audio_track = gr.Radio(list(AUDIO_TRACKS), value=shown[defaults.audio], label="Audio track")
        crf = gr.Slider(0, 51, value=defaults.crf, step=1,
                        label="Video quality, H.264 crf (lower: closer to the frames and larger; 18 as LatentSync)")
    return [audio_track, crf]


def build_app(runner: JobRunner) -> gr.Blocks:
    """The Blocks app for one loaded engine, queued so that one job runs at a time and
    others wait in line (one GPU, one job); launch it with `.launch()`."""
    # analytics off: a local tool that handles private videos should not phone home.
    with gr.Blocks(title="fastsync lip-sync", delete_cache=DELETE_CACHE, analytics_enabled=False) as app:
        gr.Markdown("# fastsync: lip-sync a video to a new audio track")
        gr.Markdown(runner.describe())
        if runner.random_weights:
            gr.Markdown(f"**Note: {RANDOM_WEIGHTS_NOTE}.** This engine was started with `--random-weights`: "
                        "the whole pipeline runs, but no trained model draws the mouth.")
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Video"):
                        video = gr.Video(label="Video of a person talking", sources=["upload"])
                    with gr.Tab("Photo"):
                        # png: gradio re-saves an upload in this format, and its default (webp) is lossy
                        photo = gr.Image(label="Photo of a face (every frame shows it)", type="filepath",
                                         sources=["upload"], format="png")
                audio = gr.Audio(label="New audio track", type="filepath", sources=["upload", "microphone"])
                controls = _sampling_controls(SamplingOptions())
                with gr.Accordion("Several faces in the picture?", open=False):
                    preview = gr.Image(label="Click the face to lip-sync", interactive=False)
                    face_near = gr.Textbox(label="Lip-sync the face nearest this point (x, y in pixels)",
                                           placeholder="empty: the largest face, as LatentSync does")
                output = _output_controls(runner.engine.components.options.output)
                button = gr.Button("Lip-sync", variant="primary")
            with gr.Column():
                result = gr.Video(label="Lip-synced video", interactive=False)
                download = gr.File(label="Download", interactive=False)
                report = gr.Textbox(label="Report", lines=9, interactive=False)
        # Page-only helpers, outside the job queue (a running job must not hold them up) and
        # outside the API: the first frame to click on, and the click as the face field's point.
        helper = {"queue": False, "api_visibility": "private"}
        for source in (video, photo):
            source.change(first_frame, inputs=source, outputs=preview, **helper)
        preview.select(_clicked, inputs=None, outputs=face_near, **helper)
        button.click(_lipsync_handler(runner), inputs=[video, audio, *controls, photo, face_near, *output],
                     outputs=[result, download, report],
                     api_name=API_NAME, concurrency_limit=1)
    app.queue(default_concurrency_limit=1)
    return app
