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
