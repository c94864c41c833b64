"""The causal LM: loading (``loading``), forwards through its blocks (``forward``) and
sentence vectors from its hidden states (``pooling``)."""

from xalign.model.loading import DTYPES, ModelLoadError, check_model, load_model, load_tokenizer, num_blocks, resolve_model_path

__all__ = ["DTYPES", "ModelLoadError", "check_model", "load_model", "load_tokenizer", "num_blocks", "resolve_model_path"]
