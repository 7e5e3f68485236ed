"""Real defect shots: which few real defect images (with masks) a model or a detector learned from.

DESIGN.md 4.1: "When the user has a few real defect images with masks, they join the corpus with
their defect-type name as prompt." This module is the one owner of that choice: it scans the
sources (an MVTec AD category's test split, `test/<type>` + `ground_truth/<type>`, through
mvtec.scan_mvtec; or a folder of one type's images with a `masks/` subfolder, through
layouts.scan_defect_folder), picks up to K images per type reproducibly from a seed, and writes the
choice as JSON: into the ARAS model folder's aras.json (synthesis/model.py) and into a detector
run's config.json (runs.py), so that `qarad eval` can leave exactly those images out of the test
split. Each record carries its file's size and SHA-256, so a copy of the dataset elsewhere cannot
bring a training image back into the test split.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .io import read_mask
from .layouts import scan_defect_folder
from .mvtec import DatasetError, Sample, scan_mvtec

HASH_CHUNK = 1 << 20  # bytes read at a time while hashing a file


@dataclass(frozen=True)
class RealDefect:
    image: str  # absolute path
    mask: str  # its 0/255 mask
    defect_type: str
    prompt: str  # the type's prompt: its name in words, or the user's description
    size: int  # bytes of the image file
    sha256: str  # of the image file: the same image found under another path is still excluded


@dataclass(frozen=True)
class RealDefects:
    """A reproducible choice of at most `shots` real defect images per type from `sources`."""
    sources: tuple[str, ...]  # absolute paths of the folders scanned
    shots: int
    seed: int
    defects: tuple[RealDefect, ...]  # by type, then in the order the seed drew them

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.defect_type for d in self.defects))

    def of_type(self, defect_type: str) -> tuple[RealDefect, ...]:
        return tuple(d for d in self.defects if d.defect_type == defect_type)

    @property
    def prompts(self) -> dict[str, str]:
        """type -> the prompt its samples were fitted with."""
        return {d.defect_type: d.prompt for d in self.defects}

    def type_of(self, prompt: str) -> str | None:
        """The type a prompt names: its name (as given or in words) or its fitted prompt, any case."""
        key = prompt.strip().casefold()
        for t, p in self.prompts.items():
            if key in (t.casefold(), words(t), p.casefold()):
                return t
        return None

    def resolve(self, prompt: str) -> str:
        """`prompt`, or the fitted prompt of the type it names ("blowhole" -> its description)."""
        t = self.type_of(prompt)
        return prompt if t is None else self.prompts[t]

    def to_dict(self) -> dict:
        return {"sources": list(self.sources), "shots": self.shots, "seed": self.seed,
                "defects": [asdict(d) for d in self.defects]}

    @classmethod
    def from_dict(cls, values: dict, source: str | Path) -> "RealDefects":
        """Rebuilt from `to_dict`'s JSON; unknown or missing keys are refused, naming `source`."""
        from ..checkpoint import CheckpointError, build_config

        if not isinstance(values, dict) or set(values) != {"sources", "shots", "seed", "defects"}:
            keys = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise CheckpointError(f"{source}: real defects must hold sources, shots, seed and defects, got {keys}")
        if not isinstance(values["defects"], list):
            raise CheckpointError(f"{source}: real defects' 'defects' must be a list")
        sources, shots, seed = values["sources"], values["shots"], values["seed"]
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise CheckpointError(f"{source}: real defects' 'sources' must be a list of folder names")
        for name, value in (("shots", shots), ("seed", seed)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise CheckpointError(f"{source}: real defects' {name!r} must be a whole number, got {value!r}")
        defects = tuple(build_config(RealDefect, d, source) for d in values["defects"])
        return cls(tuple(sources), shots, seed, defects)

    def split(self, samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """(kept, excluded): `samples` without the images chosen here (same path, or same bytes)."""
        paths = {str(Path(d.image).resolve()) for d in self.defects}
        by_size = {d.size: set() for d in self.defects}
        for d in self.defects:
            by_size[d.size].add(d.sha256)
        kept, excluded = [], []
        for s in samples:
            path = Path(s.image)
            hit = str(path.resolve()) in paths
            if not hit and path.stat().st_size in by_size:  # hash only files that could be one of them
                hit = file_sha256(path) in by_size[path.stat().st_size]
            (excluded if hit else kept).append(s)
        return kept, excluded


def words(defect_type: str) -> str:
    """A type's folder name as a prompt: "broken_large" -> "broken large", "MT-Blowhole" -> "mt blowhole"."""
    return " ".join(w for w in re.split(r"[_\-\s]+", defect_type) if w).casefold()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_descriptions(items: list[str] | None) -> dict[str, str]:
    """`--defect-prompt TYPE=TEXT ...` -> {TYPE: TEXT}."""
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ValueError(f"--defect-prompt {item!r}: expected TYPE=DESCRIPTION, e.g. blowhole=\"a small round "
                             "dark pore\"")
        out[name.strip()] = text
    return out


def scan_defects(source: str | Path) -> list[Sample]:
    """The defect images of one source, every one with its mask: an MVTec AD category folder (it
    holds test/; every type but good) or a folder of one type's images with masks/ (its name is the type)."""
    source = Path(source)
    if (source / "test").is_dir():
        samples = [s for s in scan_mvtec(source.parent, source.name, "test", allow_missing_masks=True)
                   if s.label == 1]
        for s in samples:
            if s.mask is None:
                raise DatasetError(f"{s.image}: real defect image has no mask (expected {source}/ground_truth/"
                                   f"{s.defect_type}/{s.image.stem}_mask.png); every shot needs its mask")
        if not samples:
            raise DatasetError(f"{source / 'test'}: no defect images (only test/good)")
        return samples
    if not source.is_dir():
        raise DatasetError(f"{source}: real defects folder not found (expected an MVTec AD category folder "
                           "with test/<type> and ground_truth/<type>, or a folder of defect images with masks/)")
    return scan_defect_folder(source)


def select_real_defects(sources: list[str | Path], shots: int, seed: int = 0,
                        descriptions: dict[str, str] | None = None) -> RealDefects:
    """Up to `shots` defect images per type of `sources`, drawn by `seed` (each type on its own: a
    type's choice does not depend on the other types), skipping images whose mask is empty. A type
    whose prompt should be a description rather than its name gets it from `descriptions`."""
    from ..defects.prompts import normalise_prompt

    if shots < 1:
        raise ValueError(f"--shots must be at least 1, got {shots}")
    if not sources:
        raise ValueError("--real-defects needs at least one folder")
    by_type: dict[str, list[Sample]] = {}
    for source in sources:
        for s in scan_defects(source):
            by_type.setdefault(s.defect_type, []).append(s)
    descriptions = dict(descriptions or {})
    unknown = sorted(set(descriptions) - set(by_type))
    if unknown:
        raise ValueError(f"--defect-prompt {', '.join(unknown)}: no such defect type in the real defects; "
                         f"the types are {', '.join(sorted(by_type))}")
    defects = []
    for t in sorted(by_type):
        found = sorted(by_type[t], key=lambda s: str(s.image))
        prompt = normalise_prompt(descriptions.get(t, words(t)))
        order = np.random.default_rng([seed, zlib.crc32(t.encode())]).permutation(len(found))
        picked = []
        for i in order:
            if len(picked) == shots:
                break
            if read_mask(found[i].mask).any():  # an empty mask shows no defect to learn from
                picked.append(found[i])
        if not picked:
            raise DatasetError(f"defect type {t!r}: every mask is empty ({found[0].mask.parent}); "
                               "nothing to learn from")
        for s in picked:
            path = Path(s.image).resolve()
            defects.append(RealDefect(str(path), str(Path(s.mask).resolve()), t, prompt, path.stat().st_size,
                                      file_sha256(path)))
    return RealDefects(tuple(str(Path(s).resolve()) for s in sources), shots, seed, tuple(defects))
