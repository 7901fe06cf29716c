"""A landmark cache: detection results per source frame, saved to a small JSON file.

Dubbing one video into many languages re-runs the same face detection each time;
with `--landmarks-cache FILE` it runs once. The file is tied to the video's content
(size and SHA-256) and to the landmarker that made it; on any mismatch it is ignored
and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fastsync.files import write_atomically

FORMAT = 1


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (videos can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _video_key(video: Path, backend: str) -> dict:
    return {"format": FORMAT, "bytes": video.stat().st_size, "sha256": file_sha256(video), "backend": backend}


class LandmarkCache:
    def __init__(self, path: Path | None, video: Path, backend: str):
        self.path = None if path is None else Path(path)
        self.key = _video_key(Path(video), backend) if self.path is not None else {}
        self.entries: dict[int, tuple[np.ndarray, int] | None] = {}
        self.loaded = 0
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # unreadable: recompute and overwrite
        if data.get("key") != self.key:
            return
        for index, entry in data.get("frames", {}).items():
            self.entries[int(index)] = None if entry is None else (np.asarray(entry[0], dtype=np.float64), entry[1])
        self.loaded = len(self.entries)

    def get(self, source_index: int):
        """(points3, num_faces), None for a frame known to have no face, or KeyError if unknown."""
        return self.entries[source_index]

    def __contains__(self, source_index: int) -> bool:
        return source_index in self.entries

    def put(self, source_index: int, points3: np.ndarray | None, num_faces: int = 0) -> None:
        self.entries[source_index] = None if points3 is None else (np.asarray(points3, dtype=np.float64), num_faces)

    def save(self) -> None:
        if self.path is None:
            return
        frames = {str(i): None if e is None else [e[0].tolist(), e[1]] for i, e in sorted(self.entries.items())}
        write_atomically(self.path, json.dumps({"key": self.key, "frames": frames}))
