"""Captioners: anything that writes captions for a batch of images (multimodal LLMs, label-conditioned LLMs)."""
