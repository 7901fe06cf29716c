"""The web UI (`fastsync app`): one engine, loaded once, serving job after job in the browser.

    jobs.py   the job logic: a folder per job, landmark cache per video, progress (no gradio)
    ui.py     the gradio page (build_app)
    serve.py  `fastsync app`: load the engine, build the page, serve it

Gradio is an optional extra (`pip install 'fastsync[app]'`): nothing here imports it at
module level except ui.py, which `require_gradio` guards.
"""

from __future__ import annotations

from fastsync.errors import FastsyncError


def require_gradio() -> None:
    """Fail at once, before any model loads, when the app's extra is not installed."""
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise FastsyncError("the web UI needs gradio, which is not installed",
                            hint="pip install 'fastsync[app]'  (or: pip install -e '.[app]' in a checkout)") from exc
