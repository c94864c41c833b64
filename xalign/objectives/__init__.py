"""The AFP objectives: InfoNCE over translation pairs (``contrastive``), the response-only
LM loss (``lm``) and their weighted sum for one batch (``alignment``).

Pure functions over tensors and HF models; importable without Ray or MLflow.
"""

from xalign.objectives.alignment import alignment_loss
from xalign.objectives.contrastive import LearnableTemperature, gather_with_grad, info_nce
from xalign.objectives.lm import lm_loss

__all__ = ["LearnableTemperature", "alignment_loss", "gather_with_grad", "info_nce", "lm_loss"]
