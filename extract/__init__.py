"""Stage one: decode videos, cut the crop grid, score crops with frozen CLIP, write a store."""
