"""Generators for tests, the demo, the protocol demo and the benchmarks; nothing here downloads.

- :mod:`~clifvqa.testing.videos`: synthetic H.264 clips with graded distortions (``write_clip``).
- :mod:`~clifvqa.testing.clip`: a random-weight CLIP saved as a local model folder
  (``save_random_clip``), loaded through the same ``from_pretrained`` path as real weights.
- :mod:`~clifvqa.testing.stores`: provenance and per-video arrays of a synthetic feature store
  (``synthetic_provenance``, ``synthetic_video``) for store-level tests and benchmarks.
- :mod:`~clifvqa.testing.s3`: moto's S3 server on 127.0.0.1 with a request log, a delay per
  request and a held request (``S3App``, ``Hold``, ``serving``) for the push/pull tests and benchmark.

Production code never imports this package, except the demos, which make their own data.
"""
