"""clifvqa: CLiF-VQA video quality assessment as a two-stage feature-cache pipeline.

Stage one (:mod:`clifvqa.extract`) scores CLIP crop grids of every frame against quality
prompts and writes a feature store (:mod:`clifvqa.features`); stage two (:mod:`clifvqa.train`)
trains the FAST-VQA branch with the semantic MLP from those cached features. Dataset label
files become manifests in :mod:`clifvqa.manifests`.
"""

from clifvqa._version import __version__

__all__ = ["__version__"]
