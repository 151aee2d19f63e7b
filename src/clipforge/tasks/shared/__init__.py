"""LightningModules that several stages build on; not stages themselves.

- :mod:`.clip` — :class:`~.clip.CLIPModule`: contrastive image-text training (the CLIP / SigLIP / LiT baseline of
  every comparison; llm2clip's stage 2 subclasses it).
- :mod:`.vlm_sft` — :class:`~.vlm_sft.VLMSFTModule`: supervised fine-tuning of a vision + projector + LLM model
  (recap's ``mini_llava`` captioner, enhance's AITQE scorer).
"""
