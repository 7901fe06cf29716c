"""Faces that repeat are encoded once: a photo given as the video, a looped video's turns.

A photo is a video of one frame, looped, so every face of every chunk is the same image;
a video that is looped back and forth shows its end frames twice in a row at each turn.
The VAE posterior's mean and standard deviation depend on a face's pixels alone, so fast
mode computes them once per run of equal consecutive faces, across chunk boundaries too.
Every face still draws its own posterior sample, in the reference's order: only which
micro-batch a face was encoded in changes, hence at most the rounding.

The comparison runs on the host, on the uint8 faces before upload, and never waits for
the device. Two different faces usually differ within a sparse sample of their bytes, so
a video without repeats pays a few microseconds a chunk.
"""

from __future__ import annotations

import torch

SAMPLE_STRIDE = 4099  # bytes between the sparse sample's points (a prime: no alignment with rows)


def same_face(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two uint8 host faces are equal byte for byte."""
    if a.shape != b.shape:
        return False
    a, b = a.reshape(-1), b.reshape(-1)
    return torch.equal(a[::SAMPLE_STRIDE], b[::SAMPLE_STRIDE]) and torch.equal(a, b)


class RepeatedFaces:
    """Plans which faces of a chunk to encode, and keeps the last face's moments for the next chunk."""

    def __init__(self):
        self.last_face: torch.Tensor | None = None  # host uint8 (3, res, res)
        self.last_moments: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per input, (1, C, h, w) each

    def plan(self, faces: torch.Tensor) -> tuple[list[int], list[int], bool]:
        """faces (F, 3, res, res) uint8 on the host -> (starts, owners, carried).

        `carried`: the first face equals the last chunk's final face, whose moments are kept.
        `starts`: the faces to encode, the first of each run of equal faces, except a run that
        carries on from the last chunk. `owners[i]`: the row of face i's moments in
        [the kept moments if carried] + [the starts' moments, in order].
        """
        carried = self.last_face is not None and same_face(faces[0], self.last_face)
        offset = 1 if carried else 0
        starts: list[int] = []
        owners: list[int] = []
        for i in range(faces.shape[0]):
            if i and same_face(faces[i], faces[i - 1]):
                owners.append(owners[-1])
            elif i == 0 and carried:
                owners.append(0)
            else:
                starts.append(i)
                owners.append(offset + len(starts) - 1)
        return starts, owners, carried

    def remember(self, face: torch.Tensor, moments: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The chunk's final face (host) and its moments (device, one row per input), copied:
        the moments must outlive whatever buffer the chunk's encoder wrote them into."""
        self.last_face = face.clone()
        self.last_moments = [(mean[-1:].clone(), std[-1:].clone()) for mean, std in moments]
