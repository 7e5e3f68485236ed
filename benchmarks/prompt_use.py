"""Does a fitted ARAS prior read its prompt? Teacher-forced cross-entropy of the masked tokens of
corpus windows with the right prompt, with another family's prompt and with no prompt.

    python benchmarks/prompt_use.py --model MODEL_DIR [--n 400]

Prints mean nats per masked token for each condition and the share of windows where the right
prompt beats the wrong one. The windows come from the model's own fitting corpus (the prior has
seen them), so this measures whether the prompt is used at all, not generalisation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def other_family(families: list[str]) -> torch.Tensor:
    """For each window, the index of the nearest later window of a different family."""
    n = len(families)
    return torch.tensor([next((j + k) % n for k in range(1, n) if families[(j + k) % n] != f)
                         for j, f in enumerate(families)])


def window_losses(out) -> torch.Tensor:
    """(B,) each window's mean cross-entropy over its masked tokens: the prior's loss on that window alone."""
    from qarad.synthesis.prior import PriorOutput, loss

    return torch.stack([loss(PriorOutput(out.logits[i:i + 1], out.target[i:i + 1], out.valid[i:i + 1],
                                         out.positions[i:i + 1])) for i in range(len(out.logits))])


@torch.no_grad()
def main() -> None:
    from qarad.synthesis import corpus as C
    from qarad.synthesis import loops as L
    from qarad.synthesis import model as M
    from qarad.synthesis.pipeline import ARAS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--n", type=int, default=400, help="corpus windows (the last n)")
    args = ap.parse_args()
    model = ARAS.load(args.model)
    corpus = C.load_corpus(args.model / M.CORPUS)
    idx = torch.arange(max(0, len(corpus.prompts) - args.n), len(corpus.prompts))
    part = C.Corpus(corpus.clean[idx], corpus.defect[idx], corpus.mask[idx], [corpus.prompts[i] for i in idx],
                    [corpus.families[i] for i in idx])
    codes, masks = L.encode_corpus(model.tokenizer, part, M.read_config(args.model).fit)
    text = model.text.encode(part.prompts)
    n = len(idx)
    conditions = {"right prompt": (text, False), "another family's prompt": (text[other_family(part.families)], False),
                  "no prompt": (text, True)}
    losses = {}
    for name, (t, drop) in conditions.items():
        chunks = [window_losses(model.prior(codes[s:s + 50], masks[s:s + 50], t[s:s + 50],
                                              torch.full((len(codes[s:s + 50]),), drop)))
                  for s in range(0, n, 50)]
        losses[name] = torch.cat(chunks)
        print(f"{name}: {losses[name].mean():.3f} nats / masked token")
    better = (losses["right prompt"] < losses["another family's prompt"]).float().mean()
    print(f"right prompt beats another family's on {better:.1%} of {n} windows")


if __name__ == "__main__":
    main()
