"""Tiny generated data and random-weight models, for tests, benchmarks and smoke checks.

Nothing here is fitted or measured: `make_mvtec_tree` writes a fake MVTec AD tree (grey noise,
bright squares as defects), `make_visa_tree`, `make_btad_tree` and `make_folder_tree` the same
kind of images in the other dataset layouts (data/layouts.py), and `make_tiny_aras` a randomly
initialised ARAS model folder in the layout `qarad fit` writes (synthesis/model.py), so that
commands can run in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.resolution import ResolutionPolicy
from .quality.dual_encoder import DualEncoder
from .synthesis import model
from .synthesis.prior import Prior, PriorConfig
from .synthesis.refiner import Refiner, RefinerConfig
from .synthesis.tokenizer import TokenizerConfig, VQTokenizer

DEFECT_TYPES = ("crack", "scratch")  # defect image i goes to DEFECT_TYPES[i % 2]


def texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 grey noise texture, never brighter than 200 so a defect of 255 stands out."""
    h, w = size
    noise = rng.normal(0.45, 0.08, (h, w, 1)) + rng.normal(0.0, 0.02, (h, w, 3))
    return (np.clip(noise, 0.0, 200 / 255) * 255).astype(np.uint8)


def make_synth_setup(base: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path, Path]:
    """(base, a tiny ARAS model in base/model, base/images holding one texture image per size): what a
    `qarad synth` test runs on."""
    model = make_tiny_aras(base / "model")
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        Image.fromarray(texture(rng, size)).save(images / f"{i}.png")
    return base, model, images


def defect_box(i: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the bright square in defect image i: side a quarter of the shorter side."""
    h, w = size
    side = max(2, min(h, w) // 4)
    y0 = (3 + 5 * i) % (h - side)
    x0 = (7 + 11 * i) % (w - side)
    return y0, y0 + side, x0, x0 + side


def make_mvtec_tree(root: Path, category: str = "widget", n_train: int = 6, n_good: int = 3, n_defect: int = 3,
                    size: tuple[int, int] = (48, 64)) -> Path:
    """Write a tiny MVTec AD tree under `root` (created if needed) and return `root`.

    root/CATEGORY/train/good/000.png ...             n_train normal images
    root/CATEGORY/test/good/000.png ...              n_good normal images
    root/CATEGORY/test/<type>/000.png ...            n_defect images over DEFECT_TYPES, round robin
    root/CATEGORY/ground_truth/<type>/000_mask.png   0/255 mask of the bright square (see defect_box)

    `size` is (height, width) of every image. RGB 8-bit PNGs; deterministic for given arguments.
    Calling it again with another category adds that category beside the first.
    """
    root = Path(root)
    cat = root / category
    rng = np.random.default_rng([n_train, n_good, n_defect, *size, *category.encode()])
    folders = {"train": cat / "train" / "good", "good": cat / "test" / "good"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size)).save(folders["train"] / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(texture(rng, size)).save(folders["good"] / f"{i:03d}.png")
    counters = {t: 0 for t in DEFECT_TYPES}
    for i in range(n_defect):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        stem = f"{counters[kind]:03d}"
        counters[kind] += 1
        image = texture(rng, size)
        mask = np.zeros(size, dtype=np.uint8)
        y0, y1, x0, x1 = defect_box(i, size)
        image[y0:y1, x0:x1] = 255
        mask[y0:y1, x0:x1] = 255
        (cat / "test" / kind).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cat / "test" / kind / f"{stem}.png")
        Image.fromarray(mask).save(cat / "ground_truth" / kind / f"{stem}_mask.png")
    return root


def defect_image(rng: np.random.Generator, i: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), mask bool (H, W)) of defect image i: texture with the bright square of
    `defect_box(i, size)`."""
    image = texture(rng, size)
    mask = np.zeros(size, dtype=bool)
    y0, y1, x0, x1 = defect_box(i, size)
    image[y0:y1, x0:x1] = 255
    mask[y0:y1, x0:x1] = True
    return image, mask


def make_visa_tree(root: Path, objects: tuple[str, ...] = ("candle",), n_train: int = 6, n_good: int = 3,
                   n_defect: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    """Write a tiny VisA tree under `root` and return `root`.

    root/split_csv/1cls.csv                              object,split,label,image,mask (paths relative to root)
    root/OBJECT/Data/Images/Normal/0000.JPG ...          n_train + n_good normal images (train first)
    root/OBJECT/Data/Images/Anomaly/000.JPG ...          n_defect images with the bright square
    root/OBJECT/Data/Masks/Anomaly/000.png               its mask: 255 on even i, 1 on odd i (VisA has both)

    JPEGs at quality 95 as in VisA; deterministic for given arguments. Calling it again replaces the
    csv with one for the objects of that call only.
    """
    root = Path(root)
    rows = []
    for obj in objects:
        rng = np.random.default_rng([n_train, n_good, n_defect, *size, *obj.encode()])
        data = root / obj / "Data"
        for folder in ("Images/Normal", "Images/Anomaly", "Masks/Anomaly"):
            (data / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_train + n_good):
            name = f"Images/Normal/{i:04d}.JPG"
            Image.fromarray(texture(rng, size)).save(data / name, quality=95)
            rows.append((obj, "train" if i < n_train else "test", "normal", f"{obj}/Data/{name}", ""))
        for i in range(n_defect):
            image, mask = defect_image(rng, i, size)
            Image.fromarray(image).save(data / f"Images/Anomaly/{i:03d}.JPG", quality=95)
            value = 255 if i % 2 == 0 else 1
            Image.fromarray(mask.astype(np.uint8) * value).save(data / f"Masks/Anomaly/{i:03d}.png")
            rows.append((obj, "test", "anomaly", f"{obj}/Data/Images/Anomaly/{i:03d}.JPG",
                         f"{obj}/Data/Masks/Anomaly/{i:03d}.png"))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    lines = ["object,split,label,image,mask", *(",".join(r) for r in rows)]
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def make_btad_tree(root: Path, category: str = "01", n_train: int = 6, n_good: int = 3, n_defect: int = 3,
                   size: tuple[int, int] = (48, 64), image_suffix: str = ".bmp", mask_suffix: str = ".png") -> Path:
    """Write a tiny BTAD tree under `root` and return `root`.

    root/NN/train/ok/0000.bmp ...          n_train normal images
    root/NN/test/ok/0000.bmp ...           n_good normal images
    root/NN/test/ko/0000.bmp ...           n_defect images with the bright square
    root/NN/ground_truth/ko/0000.png       0/255 mask, same stem as its image

    BTAD's product 01 has .bmp images and .png masks; pass the suffixes for other mixes.
    Calling it again with another category adds it beside the first.
    """
    root = Path(root)
    cat = root / category
    rng = np.random.default_rng([n_train, n_good, n_defect, *size, *category.encode()])
    for folder in ("train/ok", "test/ok", "test/ko", "ground_truth/ko"):
        (cat / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size)).save(cat / "train" / "ok" / f"{i:04d}{image_suffix}")
    for i in range(n_good):
        Image.fromarray(texture(rng, size)).save(cat / "test" / "ok" / f"{i:04d}{image_suffix}")
    for i in range(n_defect):
        image, mask = defect_image(rng, i, size)
        Image.fromarray(image).save(cat / "test" / "ko" / f"{i:04d}{image_suffix}")
        Image.fromarray(mask.astype(np.uint8) * 255).save(cat / "ground_truth" / "ko" / f"{i:04d}{mask_suffix}")
    return root


def make_folder_tree(root: Path, n_normal: int = 10, n_abnormal: int = 3, size: tuple[int, int] = (48, 64),
                     n_normal_test: int = 0) -> Path:
    """Write plain folders under `root` and return `root`: root/good (n_normal normal images),
    root/bad (n_abnormal with the bright square), root/masks/<stem>_mask.png (0/255) and, when
    n_normal_test > 0, root/good_test."""
    root = Path(root)
    rng = np.random.default_rng([n_normal, n_abnormal, n_normal_test, *size])
    for folder in ("good", "bad", "masks", *(["good_test"] if n_normal_test else [])):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        Image.fromarray(texture(rng, size)).save(root / "good" / f"{i:03d}.png")
    for i in range(n_normal_test):
        Image.fromarray(texture(rng, size)).save(root / "good_test" / f"{i:03d}.png")
    for i in range(n_abnormal):
        image, mask = defect_image(rng, i, size)
        Image.fromarray(image).save(root / "bad" / f"d{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"d{i:03d}_mask.png")
    return root


def make_defect_folder(folder: Path, n: int = 3, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write FOLDER/NNN.png (texture with the bright square of `defect_box`) and FOLDER/masks/NNN.png
    (0/255): real defect shots of one type, the folder's name (data/layouts.scan_defect_folder)."""
    folder = Path(folder)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n, *size])
    for i in range(n):
        image, mask = defect_image(rng, i, size)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{i:03d}.png")
    return folder


def make_tiny_aras(folder: Path, window: int = 64, seed: int = 0, refiner: bool = True,
                   source_conditioned: bool = False, corpus_from: list[Path] | None = None) -> Path:
    """A randomly initialised ARAS model folder with tiny networks. The output layers of its refiner
    and of a source-conditioned decoder are randomised too (fitted ones start as the identity), so
    that a synthesis with it changes pixels. With `corpus_from` (normal images), it also keeps a
    fitting corpus of 8 procedural renders on them, as a fitted model does (`qarad fit --init` reuses it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_cfg = TokenizerConfig(codebook_size=16, code_dim=8, channels=(8, 16, 16), source_conditioned=source_conditioned)
    prior_cfg = PriorConfig(vocab_size=16, grid=window // 8, d_model=32, n_layers=1, n_heads=2)
    ref_cfg = RefinerConfig(channels=(8, 16, 16))
    cfg = model.FitConfig(window=window, tokenizer=tok_cfg, prior=prior_cfg, refiner=ref_cfg,
                          refiner_steps=2000 if refiner else 0, corpus_size=8 if corpus_from else 3000)
    torch.manual_seed(seed)
    tok = VQTokenizer(tok_cfg)
    if source_conditioned:
        torch.nn.init.normal_(tok.decoder.body[-1].weight, std=0.05)
    model.save_part(folder, model.TOKENIZER, tok)
    model.save_part(folder, model.PRIOR, Prior(prior_cfg))
    if refiner:
        ref = Refiner(ref_cfg)
        torch.nn.init.normal_(ref.head.weight, std=0.05)
        model.save_part(folder, model.REFINER, ref)
    model.save_dual_encoder(folder, DualEncoder())
    model.write_config(folder, model.ModelConfig(cfg, ResolutionPolicy(size=64), model.FitData()))
    if corpus_from:
        from .synthesis import corpus

        corpus.save_corpus(folder / model.CORPUS, corpus.build_corpus(list(corpus_from), ResolutionPolicy(size=64), cfg))
    return folder


def part_on_backdrop(rng: np.random.Generator, size: tuple[int, int] = (96, 128), backdrop: str = "dark"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A textured part (an ellipse of grainy material, placed at random) on a plain backdrop ->
    (image (H, W, 3) float32 quantised to 8 bits, part mask (H, W) bool). `backdrop` "dark": a dark
    rubber-like part on a darker backdrop; "light": a grey part on a light one; "same": a grey part on
    a backdrop of its own mean tone (only its grain tells them apart)."""
    h, w = size
    part_mean, back = {"dark": (0.16, 0.06), "light": (0.55, 0.9), "same": (0.45, 0.45)}[backdrop]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.22, 0.3) * h, rng.uniform(0.22, 0.3) * w
    part = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    grain = rng.normal(0.0, 0.05, (h, w))
    grain = grain + 0.5 * np.roll(grain, 1, axis=1)  # a little correlated, as real grain is
    image = np.where(part, part_mean + grain, back + rng.normal(0.0, 0.003, (h, w)))
    image = np.round(np.clip(image, 0, 1) * 255) / 255
    return np.repeat(image[..., None], 3, axis=2).astype(np.float32), part
