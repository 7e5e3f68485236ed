"""Progress bars for long work (stderr, so stdout stays machine-readable)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm


@contextmanager
def bar(total: int | None, desc: str, unit: str = "img") -> Iterator[Callable[[], None]]:
    """Yield a callback that advances the bar by one. QARAD_PROGRESS=0 hides bars (worker processes)."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
              leave=True, disable=os.environ.get("QARAD_PROGRESS") == "0") as t:
        yield lambda: t.update(1)


@contextmanager
def loss_bar(total: int, desc: str, start: int = 0) -> Iterator[Callable[[float], None]]:
    """Yield a callback that advances a bar over training steps by one and shows a running loss;
    a resumed stage's bar starts at `start`."""
    with tqdm(total=total, initial=start, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5) as t:
        avg = None

        def tick(loss: float) -> None:
            nonlocal avg
            avg = loss if avg is None else 0.98 * avg + 0.02 * loss
            t.set_postfix(loss=f"{avg:.4f}", refresh=False)
            t.update(1)

        yield tick


def note(text: str) -> None:
    """One line of progress on stderr (hidden with the bars by QARAD_PROGRESS=0)."""
    if os.environ.get("QARAD_PROGRESS") != "0":
        print(text, file=sys.stderr, flush=True)
