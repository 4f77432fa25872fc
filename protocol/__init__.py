"""The paper's protocol as one experiment file: datasets, stages, runs, results and tables.

- :mod:`~clifvqa.protocol.spec`: the experiment file (YAML) read into typed stages.
- :mod:`~clifvqa.protocol.plan`: the expansion of an experiment into runs (stage × split × setting).
- :mod:`~clifvqa.protocol.runner`: ``run_experiment``: every run in its own folder, resumable.
- :mod:`~clifvqa.protocol.results`: ``results.csv``, one row per (stage, setting, split, test set).
- :mod:`~clifvqa.protocol.tables`: the paper-shaped tables (Tables 1-5) of a results.csv,
  optionally beside a reference file of reported numbers.
"""

from clifvqa.errors import ClifvqaError


class ExperimentError(ClifvqaError):
    """An experiment file, folder, results or reference file that cannot be used as it is."""
