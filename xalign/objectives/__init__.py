"""The AFP objectives: InfoNCE over translation pairs, response-only LM loss, the combined step.

Pure functions over tensors and HF models; importable without Ray or MLflow.
"""

from xalign.objectives.contrastive import (
    LearnableTemperature,
    gather_with_grad,
    info_nce,
)
from xalign.objectives.instruction import (
    IGNORE_INDEX,
    build_lm_example,
    collate_lm,
    lm_loss,
    pack_examples,
    packed_attention_mask,
)
from xalign.objectives.step import (
    AlignmentLossConfig,
    alignment_loss,
    decoder_blocks,
    early_exit_forward,
    hidden_states_forward,
    sentence_vectors,
)

__all__ = [
    "IGNORE_INDEX",
    "AlignmentLossConfig",
    "LearnableTemperature",
    "alignment_loss",
    "build_lm_example",
    "collate_lm",
    "decoder_blocks",
    "early_exit_forward",
    "gather_with_grad",
    "hidden_states_forward",
    "info_nce",
    "lm_loss",
    "pack_examples",
    "packed_attention_mask",
    "sentence_vectors",
]
