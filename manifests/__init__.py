"""Dataset manifests: CSV files of ``video`` (dataset-relative POSIX path), ``mos`` and ``split``."""
