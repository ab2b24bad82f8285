"""A search's results: the parquet tables the driver writes, and their pandas view for notebooks.

``tables`` is the on-disk format (pyarrow only), ``frames`` reads it back as DataFrames, and ``cli``
is ``python -m artune.results``. Figures live in :mod:`artune.plots`, which depends on this package
and never the other way round.
"""

from artune.errors import ResultsError
from artune.results.frames import SearchResults, compare, load, resolve_results_path
from artune.results.tables import (
    DEFAULT_RESULTS_DIR,
    EPOCH_COLUMNS,
    EPOCHS_FILE,
    MANIFEST_FILE,
    SPACE_COPY,
    STATUSES,
    TRIAL_SUMMARY_COLUMNS,
    TRIALS_FILE,
    TUNE_DIR,
    TrialRecord,
    epochs_table,
    knob_cell,
    knob_type,
    knob_value,
    manifest_runs,
    read_records,
    trials_schema,
    trials_table,
    write_atomic,
    write_json_atomic,
    write_tables,
)

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "EPOCH_COLUMNS",
    "EPOCHS_FILE",
    "MANIFEST_FILE",
    "SPACE_COPY",
    "STATUSES",
    "TRIAL_SUMMARY_COLUMNS",
    "TRIALS_FILE",
    "TUNE_DIR",
    "ResultsError",
    "SearchResults",
    "TrialRecord",
    "compare",
    "epochs_table",
    "knob_cell",
    "knob_type",
    "knob_value",
    "manifest_runs",
    "load",
    "read_records",
    "resolve_results_path",
    "trials_schema",
    "trials_table",
    "write_atomic",
    "write_json_atomic",
    "write_tables",
]
