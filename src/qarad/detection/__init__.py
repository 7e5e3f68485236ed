"""Detectors (PatchCore baseline; the synthesis-trained detector) and their evaluation."""
