"""Contrastive losses (plain ``nn.Module``s, no Lightning): each returns a dict whose ``*_loss`` terms are summed."""

from clipforge.losses.clip import ClipLoss
from clipforge.losses.gather import gather_features, rank_and_world
from clipforge.losses.siglip import SigLipLoss

__all__ = ["ClipLoss", "SigLipLoss", "gather_features", "rank_and_world"]
