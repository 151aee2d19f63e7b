"""Vision + projector + LLM training shared by recap (``mini_llava``) and enhance (AITQE)."""
