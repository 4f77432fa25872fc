"""Random-weight CLIP models saved like real ones, for tests, the demo and benchmarks.

Nothing here downloads: the tokenizer is a byte-level BPE vocabulary built in memory and the
model comes from a ``transformers`` config. The folder written by :func:`save_random_clip` is
loaded through exactly the ``from_pretrained`` path that real hub ids and local folders use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

PRESETS: dict[str, dict] = {
    # 2-layer towers, ~0.2M parameters: fast enough for unit tests.
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    ),
    # The vision tower of openai/clip-vit-base-patch32 (87.8M parameters), for honest timings.
    "vit-b-32": dict(
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        projection_dim=512,
    ),
}


def _byte_level_tokenizer():
    """A CLIP tokenizer over the 256 GPT-2 byte symbols (plus end-of-word forms), no merges
    beyond a handful: every string tokenizes, ids are stable, and nothing is fetched."""
    from transformers import CLIPTokenizer

    # GPT-2's reversible byte -> printable-unicode table: printable Latin-1 bytes map to
    # themselves, the rest to code points from 256 upwards.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    symbols = [table[b] for b in range(256)]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    # merges as pairs, which the tokenizer takes although transformers annotates them as str
    return CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=77)


def save_random_clip(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Build a CLIP model with random weights from ``preset`` and save model + tokenizer.

    Args:
        folder: where ``config.json``, ``model.safetensors`` and the tokenizer files go.
        preset: ``"tiny"`` (unit tests) or ``"vit-b-32"`` (ViT-B/32-sized vision tower).
        seed: torch seed for the weights; the same seed gives byte-identical files.

    Returns:
        The folder, loadable with ``CLIPModel.from_pretrained`` / ``CLIPTokenizer.from_pretrained``.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    if preset not in PRESETS:
        raise ValueError(f"unknown random CLIP preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    folder = Path(folder)
    tokenizer = _byte_level_tokenizer()
    text = dict(
        spec["text"],
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(spec["vision"], image_size=224, patch_size=32)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
