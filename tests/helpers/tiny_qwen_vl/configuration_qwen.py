"""Tiny stand-in of Qwen-VL's remote-code config (``auto_map`` target; copied into a model folder by a test helper)."""

from transformers import PretrainedConfig


class QWenConfig(PretrainedConfig):
    """A 2-layer decoder whose ``<img>path</img>`` spans are filled with features of the image read from ``path``."""

    model_type = "qwen"

    def __init__(
        self,
        vocab_size: int = 260,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        max_position_embeddings: int = 512,
        image_size: int = 32,
        image_patch: int = 2,
        image_start_id: int = 257,
        eod_id: int = 256,
        **kwargs,
    ) -> None:
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.image_size, self.image_patch, self.image_start_id, self.eod_id = (
            image_size,
            image_patch,
            image_start_id,
            eod_id,
        )
        kwargs.setdefault("eos_token_id", eod_id)
        super().__init__(**kwargs)
