"""clipforge: LLM-powered image-text data and vision-language model training."""

__version__ = "0.1.0"
