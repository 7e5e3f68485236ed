"""QAW, quality-aware weighting (Qian et al., arXiv 2508.03539): score each synthetic sample by how
well its defect region matches its prompt, and turn the scores into per-sample loss weights.

dual_encoder.py  the trained scorer (frozen backbone + MiniLM, trained projections)
fit.py           its contrastive training loop (the checkpoint: synthesis/model.py)

Nothing here imports synthesis/: QAW sits one floor below it (synthesis/scoring.py scores a synth folder).
weighting.py     score -> weight calibrations and the per-sample weighted loss
"""
from .dual_encoder import DualEncoder, DualEncoderConfig, region_pool
from .weighting import WeightingConfig, weighted_loss, weights

__all__ = ["DualEncoder", "DualEncoderConfig", "region_pool", "WeightingConfig", "weighted_loss", "weights"]
