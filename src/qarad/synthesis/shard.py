"""One shard of a synth job, as its own process: `python -m qarad.synthesis.shard REQUEST i/n`,
where REQUEST is generate's keyword arguments as JSON (workers.py starts these). The library's
entry, not the CLI's: nothing is parsed but the request."""
from __future__ import annotations

import json
import sys

from .generate import generate
from .sampler_config import SamplerConfig


def main(argv: list[str]) -> int:
    request, shard = json.loads(argv[0]), tuple(int(x) for x in argv[1].split("/"))
    request["sampler"] = SamplerConfig(**request["sampler"])
    try:
        generate(**request, shard=shard)
    except Exception as exc:  # the parent reports a failed shard by its last line of output
        print(f"qarad synth: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
