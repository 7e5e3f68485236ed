"""One process of a data-parallel tiny fit, launched by tests/test_scale.py under torchrun.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/scale_worker.py INPUTS OUT TASK...

INPUTS holds corpus.{json,safetensors} and prior_inputs.safetensors (codes, token masks, text);
each TASK is STAGE:NAME[:CRASH_AFTER] with STAGE tokenizer, tokenizer_ema (an EMA codebook,
test_scale.ema_config) or prior: fit that stage with the train state OUT/NAME (resuming it when
there), stop after CRASH_AFTER steps if given, and, on rank 0, write the weights to
OUT/NAME-weights and the losses to OUT/NAME-losses.json.
"""
import json
import sys
from pathlib import Path

from qarad import checkpoint, distributed
from qarad.synthesis import corpus as C
from qarad.synthesis import loops as L
from test_scale import DEAD_CODE_EVERY, ema_config, fit_config


class Crash(RuntimeError):
    pass


def main(inputs: Path, out: Path, tasks: list[str]) -> None:
    L.DEAD_CODE_EVERY = DEAD_CODE_EVERY
    corpus = C.load_corpus(inputs / "corpus")
    prior_inputs = checkpoint.read_tensors(inputs / "prior_inputs")
    with distributed.session("cpu") as device:
        for task in tasks:
            stage, name, *crash = task.split(":")
            losses = []

            def on_step(loss: float) -> None:
                losses.append(loss)
                if crash and len(losses) == int(crash[0]):
                    raise Crash

            cfg = ema_config() if stage == "tokenizer_ema" else fit_config()
            try:
                if stage in ("tokenizer", "tokenizer_ema"):
                    model = L.fit_tokenizer(corpus, cfg, out / name, on_step, device)
                else:
                    model = L.fit_prior(prior_inputs["codes"], prior_inputs["token_masks"].bool(),
                                        prior_inputs["text"], cfg, out / name, on_step, device)
            except Crash:
                continue
            if distributed.is_main():
                checkpoint.save(out / f"{name}-weights", model.state_dict(), {})
                (out / f"{name}-losses.json").write_text(json.dumps(losses))
            distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
