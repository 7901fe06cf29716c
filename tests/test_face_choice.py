"""Which face is lip-synced when a frame shows several (fastsync.face.choice).

The choice on real frames, both backends' paths and the CLI are in tests/test_cli_run.py
(the mixed clip) and tests/test_face_landmarks.py; here, its parts.
"""

from __future__ import annotations

import pytest

from fastsync.errors import FastsyncError, InputError
from fastsync.face.cache import LandmarkCache
from fastsync.face.choice import cache_backend, face_detector, nearest, parse_point


def test_a_point_is_two_numbers():
    assert parse_point("720,480") == (720.0, 480.0)
    assert parse_point(" 12.5 , 3 ") == (12.5, 3.0)
    for bad in ("720", "1,2,3", "x,1", "-1,2", "inf,2", ""):
        with pytest.raises(InputError, match="is not a point"):
            parse_point(bad)


def test_the_nearest_box_centre_wins():
    boxes = [(0, 0, 100, 100, 0.9), (200, 0, 260, 60), (0, 300, 10, 310)]  # centres (50, 50), (230, 30), (5, 305)
    assert nearest(boxes, (60, 60)) == 0
    assert nearest(boxes, (200, 40)) == 1
    assert nearest(boxes, (0, 1000)) == 2
    assert nearest(boxes[:2], (140, 40)) == 0  # equally far: the first


def test_landmarks_chosen_near_a_point_are_cached_apart(tmp_path):
    """A cache made for the largest faces must not serve a job that wants another face."""
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded here")
    path = tmp_path / "faces.json"
    largest = LandmarkCache(path, video, cache_backend("dlib-68", None))
    largest.put(0, None)
    largest.save()
    assert 0 in LandmarkCache(path, video, cache_backend("dlib-68", None))
    assert 0 not in LandmarkCache(path, video, cache_backend("dlib-68", (720, 480)))
    assert cache_backend("dlib-68", (720, 480)) != cache_backend("dlib-68", (720, 481))


def test_a_landmarker_that_cannot_choose_says_so():
    class Largest:
        name = "custom"

        def detect(self, frame):
            return None

    custom = Largest()
    assert face_detector(custom, None) == custom.detect  # no point: used as it is
    with pytest.raises(FastsyncError, match="'custom' cannot choose a face near a point"):
        face_detector(custom, (1, 2))
