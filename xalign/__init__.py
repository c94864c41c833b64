"""xalign: cross-lingual alignment (Align after Pre-training) of multilingual causal LMs."""

__version__ = "0.1.0"
