"""Stage one: decode videos, cut the crop grid, score crops with frozen CLIP, write a store.

Modules, in the order data flows through them (decoding is :mod:`clifvqa.video`'s ``VideoReader``):

- :mod:`~clifvqa.extract.config`: ``ExtractConfig``, the settings of a run.
- :mod:`~clifvqa.extract.prompts`: ``PromptSet``, ``default_prompts()``, ``load_prompts(path)``.
- :mod:`~clifvqa.extract.clip_model`: ``load_clip(model, device) -> ClipBundle``.
- :mod:`~clifvqa.extract.grid`: ``crop_origins``, ``upscaled_size`` (paper Eq. 1).
- :mod:`~clifvqa.extract.pipeline`: ``decode_crops``, decoding threads ahead of the device.
- :mod:`~clifvqa.extract.sfe`: ``SemanticFeatureExtractor`` (Eqs. 2-6), batched on the device.
- :mod:`~clifvqa.extract.runner`: ``extract_dataset``, resumable and sharded runs into a store.
"""
