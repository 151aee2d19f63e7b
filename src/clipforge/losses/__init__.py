"""Losses (plain torch, no Lightning): the contrastive losses (each returns a dict whose ``*_loss`` terms are
summed), SimCSE, the answer-only next-token loss of VLM fine-tuning and the MNTP objective."""

from clipforge.losses.answer import AnswerLoss, answer_window
from clipforge.losses.clip import ClipLoss
from clipforge.losses.gather import gather_features, rank_and_world
from clipforge.losses.mntp import mntp_loss
from clipforge.losses.siglip import SigLipLoss

__all__ = [
    "AnswerLoss",
    "ClipLoss",
    "SigLipLoss",
    "answer_window",
    "gather_features",
    "mntp_loss",
    "rank_and_world",
]
