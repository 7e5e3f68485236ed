"""Stream images through a view-wise function in bounded batches.

Images are decoded one at a time (one read ahead in a background thread), cut into views by
their `Layout`, and views of the same shape are grouped into batches of at most `batch_size`.
Memory is bounded by the batch and by one image's stitched map, never by the dataset size.
What runs in the read-ahead thread (`load`) must change no process-wide state: warnings filters,
the umask and library globals are shared with the main thread, which exports, trains and scores
meanwhile (issue 32: an "error" warnings filter set while decoding crashed the ONNX export).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .io import image_size, read_image
from .resolution import Layout, ResolutionPolicy


@dataclass
class Loaded:
    index: int
    path: Path
    image: np.ndarray | None  # (H, W, 3) float32 original; None when not kept
    layout: Layout
    views: torch.Tensor  # (n, 3, vh, vw)


def load(index: int, path: Path, policy: ResolutionPolicy, keep_image: bool = True) -> Loaded:
    """Decode one image and cut its views. Without `keep_image` the original is dropped and, where
    the policy shrinks the image 8x or more, decoded reduced (Layout.decode_reduction): memory then
    follows the working size, not the file's."""
    if keep_image:
        image = read_image(path)
        layout = policy.layout(*image.shape[:2])
        return Loaded(index, Path(path), image, layout, layout.views(image))
    h, w = image_size(path)
    k = policy.layout(h, w).decode_reduction  # the same for (w, h): policies scale both sides alike
    reduced = read_image(path, reduce=k)
    if k == 1:
        layout = policy.layout(*reduced.shape[:2])
    else:  # a decoder that turns the image (EXIF orientation) swaps the header's sides
        turned = reduced.shape[:2] != (-(-h // k), -(-w // k))
        layout = policy.layout(*((w, h) if turned else (h, w)))
    return Loaded(index, Path(path), None, layout, layout.views(reduced, k))


def iter_loaded(paths: Iterable[Path], policy: ResolutionPolicy, read_ahead: int = 2,
                keep_image: bool = True) -> Iterator[Loaded]:
    """Decode images in order, overlapping decoding with the caller's compute."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for i, path in enumerate(paths):
            pending.append(pool.submit(load, i, path, policy, keep_image))
            if len(pending) > read_ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def map_views(
    items: Iterable[Loaded],
    fn: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 8,
) -> Iterator[tuple[Loaded, torch.Tensor]]:
    """Apply `fn` to every view in batches; yield (item, fn(views of item)) in input order."""
    if not isinstance(batch_size, int) or batch_size < 1:  # a batch of 0 views would never empty the queue
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    waiting: deque[tuple[Loaded, list[torch.Tensor]]] = deque()
    chunks: list[tuple[int, torch.Tensor]] = []  # (position in `waiting`, views)
    queued = 0

    def flush():
        nonlocal chunks, queued
        if not chunks:
            return
        out = fn(torch.cat([v for _, v in chunks]))
        start = 0
        for slot, views in chunks:
            waiting[slot][1].append(out[start:start + len(views)])
            start += len(views)
        chunks, queued = [], 0

    def ready():
        while waiting and sum(len(o) for o in waiting[0][1]) == len(waiting[0][0].views):
            item, outs = waiting.popleft()
            yield item, torch.cat(outs)

    for item in items:
        waiting.append((item, []))
        slot = len(waiting) - 1
        views, start = item.views, 0
        while start < len(views):
            if chunks and views.shape[1:] != chunks[0][1].shape[1:]:
                flush()  # a batch holds views of one shape only
            part = views[start:start + batch_size - queued]  # fill the open batch first
            chunks.append((slot, part))
            queued += len(part)
            start += len(part)
            if queued >= batch_size:
                flush()
        if not chunks:
            yield from ready()
    flush()
    yield from ready()
