"""ARAS synthesis (Qian et al., arXiv 2508.03539): VQ tokenizer, masked AR prior, sampler + blending.

Pure torch modules only; training loops and file I/O live elsewhere (fit.py, checkpoint.py).
"""
