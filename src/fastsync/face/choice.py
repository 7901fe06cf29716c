"""Which face a frame's lip-sync changes when it shows several.

The reference takes the largest face in every frame. In an interview or a podcast the
speaker is not always the largest face, so a job may name a point instead (`run
--face-near X,Y`, in pixels of the video as displayed): in every frame the face whose
detector box has its centre nearest that point is taken. The choice is made per frame,
like the reference's, so frames can be detected in any order and in parallel.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np

from fastsync.errors import FastsyncError, InputError

Point = tuple[float, float]


def parse_point(text: str, what: str = "--face-near", path=None) -> Point:
    """"X,Y" -> (x, y); InputError names `what` (the option, or a batch file's column and
    the file as `path`) and says what is wrong."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise ValueError
    except ValueError:
        raise InputError(f"{what} {text!r} is not a point", path,
                         hint="give X,Y in pixels of the video as displayed, e.g. 540,700") from None
    return x, y


def optional_point(text: str | None, what: str = "--face-near", path=None) -> Point | None:
    """parse_point, where an absent or blank value means no point (the largest face): a batch
    file's empty cell, the page's empty field."""
    return None if text is None or not str(text).strip() else parse_point(str(text), what, path)


def nearest(boxes: Sequence[Sequence[float]], point: Point) -> int:
    """Index of the box (x1, y1, x2, y2, ...) whose centre is nearest `point`; the first of equals."""
    centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes], dtype=np.float64)
    return int(np.argmin(((centres - np.asarray(point, dtype=np.float64)) ** 2).sum(axis=1)))


def cache_backend(name: str, near: Point | None) -> str:
    """The landmark cache's backend key: landmarks chosen near a point are another video's worth."""
    return name if near is None else f"{name}@near({near[0]:g},{near[1]:g})"


def face_detector(landmarker, near: Point | None) -> Callable:
    """`landmarker.detect` taking the face nearest `near` (the largest when None)."""
    if near is None:
        return landmarker.detect
    if "near" not in inspect.signature(landmarker.detect).parameters:
        raise FastsyncError(f"the face landmarker {getattr(landmarker, 'name', type(landmarker).__name__)!r} "
                            "cannot choose a face near a point (its detect() takes no `near`)")
    return lambda frame: landmarker.detect(frame, near=near)
