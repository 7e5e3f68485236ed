"""QARAD: offline industrial visual inspection.

Language-conditioned local auto-regressive anomaly synthesis (ARAS), quality-aware weighting
(QAW) and detection, after Qian et al., arXiv 2508.03539 (AAAI 2026).
"""
__version__ = "0.1.0"
