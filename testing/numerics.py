"""How far two extractions of the same video may differ when bit equality is not promised.

Extraction is bit-exact across how the work was cut (resume, shard, decode workers, other
videos, ``--batch-size auto``) on one machine at one thread count and batch size. Another
batch size, thread count, CPU or device sums the same products in another order: the numbers
then differ by float32 rounding, bounded here.

Derivation. Let eps = 2**-23 (float32 spacing at 1; the unit roundoff is u = eps / 2).

1. One reduction. A dot product of K terms summed in two different orders (other blocking,
   threads or vector width) gives two results that each carry a rounding error; for
   rounding errors that behave like independent random variables the error of a K-term sum
   grows like sqrt(K) * u * sum|terms| (Higham and Mary, "A new approach to probabilistic
   rounding error analysis", 2019), so the two results differ by about sqrt(K) * eps relative
   to sum|terms|.
2. The image tower. K is the longest reduction of the tower: the patch embedding (3 * p**2
   terms for patch size p; 3072 for p = 32), the MLP (intermediate size) or the residual width.
   Layer norms rescale every layer, so errors do not compound with depth beyond a small
   factor; the embedding is L2-normalised at the end. The relative (L2) error of a crop's
   embedding is taken as ``eps_e = ULPS * sqrt(K) * eps``, with ``ULPS = 4`` covering the
   constant of step 1, the number of layers and cancellation (measured on the random towers
   of :mod:`clifvqa.testing.clip` across pass shapes and thread counts: components move by at
   most 1.2e-7, below 0.02 * sqrt(K) * eps).
   Embedding components are at most 1, so ``eps_e`` bounds each component's difference.
3. Scores. A logit is ``s * <e, t>`` with ``|t| = 1`` and ``s = logit_scale.exp()``: it moves
   by at most ``s * eps_e``. A softmax probability moves by at most ``2 * p * max|d logit|``
   (``dp_i = p_i (dz_i - sum_j p_j dz_j)``), so maps move by at most
   ``2 * s * eps_e * max p``; pooled means and maxima over the grid by no more than the maps.
4. Stored float16 arrays (maps, embeddings). A float32 difference can move a value across a
   float16 rounding boundary: add one float16 step at the peak magnitude,
   ``2**(floor(log2(peak)) - 10)``.

The bound is loose by design: for the tiny CLIP it allows 7.8e-5 on pooled features where
4.1e-8 is measured (``benchmarks/bench_exactness.py``). It still catches real errors: with the
same CLIP, adjacent frames' pooled features, and neighbouring crops' maps, differ by 2.7e-3 or
more, so a crop scored in another's place fails it by a factor of 30 at least.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS32 = 2.0**-23
ULPS = 4.0


@dataclass(frozen=True)
class Float32Rounding:
    """The tolerances of one CLIP (see the module docstring).

    Attributes:
        reduction: K, the longest dot product of the image tower.
        logit_scale: ``s = logit_scale.exp()``, the gain from embeddings to logits.
    """

    reduction: int
    logit_scale: float

    @classmethod
    def of(cls, bundle) -> Float32Rounding:
        """The tolerances of a loaded CLIP (:class:`clifvqa.extract.clip_model.ClipBundle`)."""
        vision = bundle.model.config.vision_config
        reduction = max(3 * vision.patch_size**2, vision.intermediate_size, vision.hidden_size)
        return cls(reduction, float(bundle.model.logit_scale.detach().float().exp()))

    @property
    def embedding(self) -> float:
        """``eps_e``: how far a unit embedding (and each of its components) may move."""
        return ULPS * math.sqrt(self.reduction) * EPS32

    def atol(self, kind: str, want: np.ndarray) -> float:
        """The absolute tolerance of an array of ``kind`` (``"pooled"`` or ``"maps"``:
        softmax probabilities; ``"embeddings"``: unit vectors) compared with ``want``."""
        peak = float(np.abs(want.astype(np.float32)).max()) if want.size else 0.0
        if kind == "embeddings":
            tol = self.embedding
        elif kind in ("pooled", "maps"):
            tol = 2 * self.logit_scale * self.embedding * peak
        else:
            raise ValueError(f"kind must be pooled, maps or embeddings, got {kind!r}")
        if want.dtype == np.float16 and peak > 0:
            tol += 2.0 ** (math.floor(math.log2(peak)) - 10)
        return tol

    def assert_close(self, kind: str, got: np.ndarray, want: np.ndarray, what: str = "") -> float:
        """Assert ``got`` is within :meth:`atol` of ``want`` (same shape and dtype); returns
        the largest difference."""
        assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
        atol = self.atol(kind, want)
        assert diff <= atol, f"{what} {kind}: max |diff| {diff:.3g} > float32 rounding bound {atol:.3g}"
        return diff
