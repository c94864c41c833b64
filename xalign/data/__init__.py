"""Data for alignment: translation pairs for the contrastive loss and cross-lingual
instruction samples for the LM loss, tokenised once, served as deterministic sharded
micro-batches (``build``). Knows nothing of Ray."""

from xalign.data.build import AlignmentData, build_alignment_data
from xalign.data.mix import mix_metrics

__all__ = ["AlignmentData", "build_alignment_data", "mix_metrics"]
