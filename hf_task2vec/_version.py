"""The version of hf_task2vec (recorded in every embedding's provenance)."""

__version__ = "0.1.0"
