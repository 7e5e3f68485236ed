"""The ARAS model folder, its one owner: file names, aras.json, and reading and writing the parts.

MODEL/
    aras.json                          {"fit": FitConfig, "policy": ResolutionPolicy, "data": FitData}, and
                                       "real_defects" (data/real_defects.py) when real shots joined the corpus
    corpus.{json,safetensors}          the fitting corpus (fit.py), kept so a resumed fit does not re-render
    tokenizer.{json,safetensors}       VQTokenizer; the JSON is its TokenizerConfig
    prior.{json,safetensors}           Prior; PriorConfig
    refiner.{json,safetensors}         Refiner; RefinerConfig (only when fit.refiner_steps > 0)
    dual_encoder.{json,safetensors}    the QAW scorer (quality/dual_encoder.py); the JSON is
                                       {"method": "dual_encoder", "dual_encoder": DualEncoderConfig}
    state/STAGE.{json,safetensors}     train state of an unfinished stage (training.py)
    timings.json                       wall seconds per fit stage

`qarad fit` writes it (synthesis/fit.py: fit_model), `qarad synth` and `qarad score` read it;
nothing else names these files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import checkpoint, owned
from ..data.io import make_folder, write_json
from ..data.real_defects import RealDefects
from ..data.resolution import ResolutionPolicy
from ..flags import check_float, check_int
from ..quality.dual_encoder import DualEncoder, DualEncoderConfig
from .prior import Prior, PriorConfig
from .refiner import Refiner, RefinerConfig
from .tokenizer import TokenizerConfig, VQTokenizer
from .window import LEGACY_MAX_ZOOM, WindowRule

CONFIG = "aras.json"
CORPUS = "corpus"
TOKENIZER = "tokenizer"
PRIOR = "prior"
REFINER = "refiner"
DUAL_ENCODER = "dual_encoder"
STATE = "state"
TIMINGS = "timings.json"
PARTS = (CORPUS, TOKENIZER, PRIOR, REFINER, DUAL_ENCODER)  # each STEM.safetensors + STEM.json



@dataclass(frozen=True)
class FitConfig:
    # working px a side; the prior's grid is window / 8 tokens. Token detail is the same at any
    # window (factor 8); 64 px = 8x8 tokens costs a quarter of 128 per step, so the fit affords
    # more steps in the same time. The window is cut around each mask by `window_rule`.
    window: int = 64
    # window px per working px, at most: small defects are zoomed in until they span half the
    # window, so they cover several tokens instead of one (window.py)
    max_zoom: float = 4.0
    corpus_size: int = 3000
    # with zoomed windows the tokenizer keeps learning defects past 2000 steps (magnetic tile,
    # tokenizer ceiling 0.44 at 2000, 0.55 at 4000; about 5 min per 2000 steps on 2 cores)
    tokenizer_steps: int = 4000
    prior_steps: int = 2500
    # 0: no refiner, decoded codes are pasted as they are. Off by default: its samples are more
    # realistic (magnetic tile KID 0.80 vs 1.05) but on the demo a detector trained on them found
    # the test defects less well (AUPRO 0.79-0.91 vs 0.88-0.99; BENCHMARKS.md)
    refiner_steps: int = 0
    qaw_steps: int = 1500  # dual-encoder (QAW scorer) steps, trained on the same corpus
    batch_size: int = 8
    tokenizer_lr: float = 3e-4
    prior_lr: float = 3e-4
    warmup_steps: int = 100
    perceptual_weight: float = 0.5
    # reconstruction weight of defect pixels relative to the rest: defects cover a few % of a
    # window, and a codebook fitted to the plain average learns to draw the material, not the defect
    # (tokenizer ceiling on magnetic tile, 2000 steps: 0.44 at weight 10, 0.50 at 30)
    defect_weight: float = 30.0
    prompt_dropout: float = 0.1
    mask_dilate_px: int = 2
    # real defect shots (data/real_defects.py), when given: each becomes this many corpus samples (the
    # shot itself and copies re-placed on other normal windows, defects/transplant.py) ...
    real_samples_per_shot: int = 40
    # ... and this share of every tokenizer and prior batch is drawn from them, so that a few shots
    # are not drowned by thousands of procedural renders
    real_share: float = 0.35
    checkpoint_every: int = 100
    seed: int = 0
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)

    def __post_init__(self):
        # counts and rates checked before any folder is made: batch 0 trained on nan losses for ever
        for name in ("corpus_size", "batch_size", "checkpoint_every"):
            check_int(name, getattr(self, name))
        for name in ("tokenizer_steps", "prior_steps", "refiner_steps", "qaw_steps", "warmup_steps", "mask_dilate_px"):
            check_int(name, getattr(self, name), 0)
        for name in ("tokenizer_lr", "prior_lr"):
            check_float(name, getattr(self, name), 0.0, low_open=True)
        for name in ("perceptual_weight", "defect_weight"):
            check_float(name, getattr(self, name), 0.0)
        check_float("prompt_dropout", self.prompt_dropout, 0.0, 1.0)
        check_int("--window", self.window, 32)
        if self.window % 8:
            raise ValueError(f"window must be a multiple of 8 and at least 32 px, got {self.window}")
        self.window_rule  # building the rule checks max_zoom >= 1
        check_float("max_zoom", self.max_zoom)  # ... and inf would zoom without end
        if self.prior.vocab_size != self.tokenizer.codebook_size:
            raise ValueError(f"prior vocabulary ({self.prior.vocab_size}) must equal the tokenizer's codebook size "
                             f"({self.tokenizer.codebook_size})")
        if not 0.0 <= self.real_share < 1.0:
            raise ValueError(f"real_share must be in [0, 1), got {self.real_share}")
        check_int("real_samples_per_shot", self.real_samples_per_shot)
        if self.prior.grid * 8 != self.window:
            raise ValueError(f"prior grid {self.prior.grid} tokens does not cover the {self.window}-px window "
                             f"(need grid = window / 8 = {self.window / 8:g})")

    @property
    def window_rule(self) -> WindowRule:
        return WindowRule(self.window, self.max_zoom)


# aras.json "fit" fields added since the first models were written, each with the value that reads
# an older model as it was fitted (the one table: reading a model and comparing a rerun with it)
LEGACY_FIT = {
    "max_zoom": LEGACY_MAX_ZOOM,  # fitted before windows zoomed: keep their unzoomed view
    "refiner_steps": 0,  # fitted before the refiner existed: it has none
    "real_samples_per_shot": FitConfig.real_samples_per_shot,  # fitted before real shots: unused
    "real_share": FitConfig.real_share,
}
LEGACY_TOKENIZER = {"ema_decay": 0.0}  # fitted before EMA codebooks: gradient-trained


def with_legacy_defaults(fit: dict) -> dict:
    """A copy of aras.json's "fit" with every field an older model lacks set to its LEGACY_FIT value
    (and its tokenizer's to LEGACY_TOKENIZER's)."""
    fit = {**LEGACY_FIT, **fit}
    if isinstance(fit.get("tokenizer"), dict):
        fit["tokenizer"] = {**LEGACY_TOKENIZER, **fit["tokenizer"]}
    return fit


def config_dict(cfg: FitConfig) -> dict:
    return asdict(cfg)


def config_from_dict(values: dict, source) -> FitConfig:
    if not isinstance(values, dict):
        raise checkpoint.CheckpointError(f"{source}: FitConfig must be a JSON object, got {type(values).__name__}")
    values = with_legacy_defaults(values)
    tok = checkpoint.build_config(TokenizerConfig, values.pop("tokenizer", {}), source)
    pri = checkpoint.build_config(PriorConfig, values.pop("prior", {}), source)
    ref = checkpoint.build_config(RefinerConfig, values.pop("refiner", {}), source)
    return checkpoint.build_config(FitConfig, {**values, "tokenizer": tok, "prior": pri, "refiner": ref}, source)


@dataclass(frozen=True)
class FitData:
    """What a model was fitted on (aras.json "data"): provenance only, nothing is rebuilt from it."""
    root: str | None = None
    category: str | list[str] | None = None
    max_train_images: int | None = None
    layout: str = "mvtec"  # data/layouts.py; models fitted before layouts existed read MVTec AD trees
    folder: dict | None = None  # the folder layout's FolderSplit
    init: str | None = None  # `qarad fit --init MODEL`: the model whose tokenizer, corpus and prior it continued


@dataclass(frozen=True)
class ModelConfig:
    fit: FitConfig
    policy: ResolutionPolicy
    data: FitData
    # real defect shots in the corpus (their type names are prompts `qarad synth` knows); None: none
    real_defects: RealDefects | None = None

    @property
    def real_types(self) -> tuple[str, ...]:
        return self.real_defects.types if self.real_defects else ()


KEYS = {"fit", "policy", "data"}  # aras.json always; REAL_KEY too when the corpus holds real shots
REAL_KEY = "real_defects"


def config_json(config: ModelConfig) -> dict:
    """aras.json's content as it reads back (tuples become lists)."""
    out = {"fit": config_dict(config.fit), "policy": config.policy.to_dict(), "data": asdict(config.data)}
    if config.real_defects is not None:
        out[REAL_KEY] = config.real_defects.to_dict()
    return json.loads(json.dumps(out))


def read_config(folder: str | Path) -> ModelConfig:
    """MODEL/aras.json, checked at every level: an unknown key anywhere is refused."""
    path = Path(folder) / CONFIG
    meta = checkpoint.load_config(path)
    if not KEYS <= set(meta) <= KEYS | {REAL_KEY}:
        raise checkpoint.CheckpointError(f"{path}: expected the keys ['data', 'fit', 'policy'] (and "
                                         f"'{REAL_KEY}'), got {sorted(meta)}")
    real = RealDefects.from_dict(meta[REAL_KEY], path) if REAL_KEY in meta else None
    return ModelConfig(config_from_dict(meta["fit"], path),
                       checkpoint.build_config(ResolutionPolicy, meta["policy"], path),
                       checkpoint.build_config(FitData, meta["data"], path), real)


def write_config(folder: str | Path, config: ModelConfig) -> None:
    write_json(Path(folder) / CONFIG, config_json(config))


def read_timings(folder: str | Path) -> dict[str, float]:
    """Wall seconds per fit stage; empty for a model fitted before they were kept."""
    path = Path(folder) / TIMINGS
    return checkpoint.read_numbers(path) if path.is_file() else {}


def prepare_folder(out: str | Path, config: ModelConfig, overwrite: bool = False) -> bool:
    """Make `out` ready to fit `config` into (its aras.json written); True when the folder is new.

    A folder holding the same fit is kept, so the fit resumes; one fitted with other settings is
    refused unless `overwrite` (then its model files go: nothing in them can be reused; other files stay).
    """
    out = Path(out)
    path = out / CONFIG
    if path.is_file():
        old = checkpoint.load_config(path)
        if isinstance(old.get("data"), dict):  # a model fitted before a FitData field existed has its default
            old["data"] = {**asdict(FitData()), **old["data"]}
        if isinstance(old.get("fit"), dict):  # ... and one fitted before a FitConfig field, its LEGACY_FIT value
            old["fit"] = with_legacy_defaults(old["fit"])
        if old != config_json(config):
            if not overwrite:
                raise ValueError(f"{out}: holds an ARAS model fitted with other settings; choose another --out "
                                 "or pass --overwrite")
            owned.remove_own(out, own_files())  # the old model's files only: a user's notes stay
    elif not owned.is_empty(out):
        raise ValueError(f"{out}: folder is not empty and is not an ARAS model; choose another --out")
    fresh = not out.exists()
    make_folder(out)
    owned.mark(out, "model")
    write_config(out, config)
    (out / STATE).mkdir(exist_ok=True)
    return fresh


def own_files() -> list[str]:
    """Every file a fit writes into a model folder (relative names): what a refit may delete."""
    stems = [*PARTS, *(f"{STATE}/{part}" for part in PARTS)]
    return [CONFIG, TIMINGS, *(f"{stem}{ext}" for stem in stems for ext in (".safetensors", ".json"))]


def has(folder: str | Path, part: str) -> bool:
    """Whether MODEL holds the fitted `part` (TOKENIZER, PRIOR, REFINER or DUAL_ENCODER)."""
    return (Path(folder) / f"{part}.safetensors").is_file()


def save_part(folder: str | Path, part: str, module: VQTokenizer | Prior | Refiner) -> None:
    """A tokenizer, prior or refiner: its weights and, beside them, the config it is rebuilt from."""
    checkpoint.save(Path(folder) / part, module.state_dict(), asdict(module.config))


def _load_part(folder: Path, part: str, module_cls, config_cls):
    stem = folder / part
    module = module_cls(checkpoint.build_config(config_cls, checkpoint.load_config(stem), folder / f"{part}.json"))
    checkpoint.load_module(stem, module)
    return module.eval()


def load_tokenizer(folder: str | Path) -> VQTokenizer:
    return _load_part(Path(folder), TOKENIZER, VQTokenizer, TokenizerConfig)


def load_prior(folder: str | Path) -> Prior:
    return _load_part(Path(folder), PRIOR, Prior, PriorConfig)


def load_refiner(folder: str | Path) -> Refiner:
    return _load_part(Path(folder), REFINER, Refiner, RefinerConfig)


SCORER_METHOD = "dual_encoder"  # the scorer checkpoint's "method", checked on load


def save_dual_encoder(folder: str | Path, scorer: DualEncoder, stem: str = DUAL_ENCODER) -> None:
    """The QAW scorer into MODEL/dual_encoder.{json,safetensors} (`stem` for another name)."""
    checkpoint.save(Path(folder) / stem, scorer.state_dict(),
                    {"method": SCORER_METHOD, "dual_encoder": asdict(scorer.config)})


def load_dual_encoder(folder: str | Path, stem: str = DUAL_ENCODER) -> DualEncoder:
    """Rebuild the QAW scorer of MODEL (`stem` for another name); names and shapes must match exactly."""
    path = Path(folder) / stem
    cfg = checkpoint.load_config(path)
    if set(cfg) != {"method", "dual_encoder"} or cfg["method"] != SCORER_METHOD:
        raise checkpoint.CheckpointError(f"{path.with_suffix('.json')}: not a dual encoder config "
                                         f"(keys {sorted(cfg)})")
    scorer = DualEncoder(checkpoint.build_config(DualEncoderConfig, cfg["dual_encoder"], path.with_suffix(".json")))
    rest = checkpoint.load_module(path, scorer)
    if rest:  # load_module with no prefix consumes everything; kept as a guard for the contract
        raise checkpoint.CheckpointError(f"{path}: unexpected tensors {sorted(rest)[:5]}")
    return scorer.eval()


@dataclass
class Networks:
    """The synthesis networks of a model folder, in eval mode."""
    tokenizer: VQTokenizer
    prior: Prior
    refiner: Refiner | None  # None: fitted without one (the default, and every model older than it)


def load_networks(folder: str | Path, config: ModelConfig) -> Networks:
    """Tokenizer, prior and (when the model was fitted with one) refiner; a prior whose vocabulary
    does not match the tokenizer's codebook is refused (its codes would index past the codebook)."""
    folder = Path(folder)
    tokenizer, prior = load_tokenizer(folder), load_prior(folder)
    if prior.config.vocab_size != tokenizer.config.codebook_size:
        raise checkpoint.CheckpointError(
            f"{folder / PRIOR}.json: vocabulary {prior.config.vocab_size} does not match the tokenizer's "
            f"{tokenizer.config.codebook_size} codes ({folder / TOKENIZER}.json)")
    refiner = load_refiner(folder) if config.fit.refiner_steps else None
    return Networks(tokenizer, prior, refiner)
