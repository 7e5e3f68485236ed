"""Alternative QAW scorer from real CLIP weights in a local directory (DESIGN.md 4.5).

Qian et al., arXiv 2508.03539 score synthetic samples with an image-text dual encoder; when a
user has CLIP weights on disk (a `save_pretrained` folder: config.json, model.safetensors,
tokenizer files), this adapter scores (crop around the defect region, prompt) pairs with them.

Loading is strictly local (`local_files_only=True`) and safetensors-only, so no download and no
unpickling. Images are cropped and normalised here in torch rather than by `CLIPProcessor`:
the crops are already tensors, and the processor's fast path needs an image library that does not
import next to this project's CPU torch. The normalisation statistics are read from the folder's
preprocessor_config.json when present. `transformers` is imported only when a scorer is built.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

# OpenAI CLIP's pixel statistics, used when the folder carries no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_CONTEXT = 1.5  # crop side = 1.5 x the longer side of the region's bounding box
MIN_CROP = 32  # px: tiny regions still get some surrounding material
PREPROCESSOR_FILE = "preprocessor_config.json"


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def region_crop_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(H, W) mask -> square (y0, y1, x0, x1) around its bounding box with context, inside the image."""
    h, w = mask.shape
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:  # no region: score the whole image
        return 0, h, 0, w
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = min(h, w, max(MIN_CROP, round(CROP_CONTEXT * max(y1 - y0, x1 - x0))))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top = min(max(0, cy - side // 2), h - side)  # shift, do not shrink, when the box hits an edge
    left = min(max(0, cx - side // 2), w - side)
    return top, top + side, left, left + side


class CLIPScorer:
    """Cosine similarity between CLIP embeddings of a region crop and of its prompt, in [-1, 1]."""

    def __init__(self, model, tokenizer, mean=CLIP_MEAN, std=CLIP_STD, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device = "cpu") -> "CLIPScorer":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a directory with CLIP weights (a save_pretrained folder)")
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = path / PREPROCESSOR_FILE
        if pre.is_file():
            stats = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = tuple(stats.get("image_mean", mean)), tuple(stats.get("image_std", std))
        return cls(model, tokenizer, mean, std, device)

    def crops(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] (or uint8), (B, H, W) -> (B, 3, S, S) normalised crops at CLIP's input size."""
        out = []
        for image, mask in zip(images, masks):
            y0, y1, x0, x1 = region_crop_box(mask)
            crop = image[None, :, y0:y1, x0:x1]
            crop = crop.float() / 255.0 if crop.dtype == torch.uint8 else crop.float()
            out.append(F.interpolate(crop, size=(self.image_size, self.image_size), mode="bilinear",
                                     align_corners=False, antialias=True))
        return (torch.cat(out) - self.mean) / self.std

    @torch.no_grad()
    def text_embed(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1)

    @torch.no_grad()
    def image_embed(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pixels = self.crops(images.cpu(), masks.cpu()).to(self.device)
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def score(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) cosine similarity of each region crop with its own prompt, on the CPU."""
        if not (len(images) == len(masks) == len(prompts)):
            raise ValueError(f"need one mask and one prompt per image, got {len(images)}, {len(masks)}, {len(prompts)}")
        if len(prompts) == 0:
            return torch.zeros(0)
        sim = (self.image_embed(images, masks) * self.text_embed(list(prompts))).sum(-1)
        return sim.clamp(-1.0, 1.0).cpu()
