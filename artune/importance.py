"""Optuna's parameter importances of a search, or one line saying why there are too few trials for them.

Optuna's default evaluator (PED-ANOVA) compares where each knob's values fall in the best 10% of the
COMPLETE trials with where they fall in all of them. With one finished trial it has nothing to compare and
gives every knob an equal share (0.2 each for five knobs), and with a handful its numbers describe those few
trials rather than the knobs; Optuna's documentation of the evaluator advises at least 5 trials in that best
10%. So :func:`param_importances` refuses below that, naming the counts, rather than show numbers. ASHA and
the time budget leave most of a search's trials stopped (PRUNED), which Optuna does not count.
Optuna and pandas are imported when called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from artune.errors import ResultsError
from artune.humanize import first_line
from artune.results import SearchResults

if TYPE_CHECKING:
    import optuna
    import pandas as pd

TARGET_QUANTILE = 0.1  # PED-ANOVA's own default: the best 10% of the trials
MIN_TOP_TRIALS = 5  # trials in that best 10%, as Optuna's documentation of PED-ANOVA advises


def trials_needed(top: int = MIN_TOP_TRIALS, quantile: float = TARGET_QUANTILE) -> int:
    """The fewest COMPLETE trials whose best ``quantile`` holds ``top`` of them (41 for 5 in the best 10%)."""
    n = top
    while math.ceil(quantile * n) < top:  # as Optuna's quantile filter counts
        n += 1
    return n


def open_study(results: SearchResults) -> optuna.Study:
    """The search's Optuna study: ``optuna.db`` beside its tables (it survives a move), else the storage URL
    ``manifest.json`` records; a ResultsError where there is none."""
    import optuna
    from sqlalchemy.engine import make_url

    from artune.study import STUDY_FILE, sqlite_file, storage_url

    beside = results.path / STUDY_FILE if results.path is not None else None
    here = beside is not None and beside.exists()
    storage = storage_url(results.path) if here else results.manifest.get("storage")
    database = sqlite_file(storage) if storage is not None else None  # None for a server's: asked as it opens
    if storage is None or (database is not None and not database.exists()):
        where = beside if beside is not None else "(compared searches have no one study)"
        raise ResultsError(f"no Optuna study at {where}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = results.manifest.get("study_name", results.name)
    shown = make_url(storage).render_as_string(hide_password=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # Optuna's "Record does not exist."
        raise ResultsError(f"no Optuna study {name!r} in {shown}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors share no useful base
        what = f"{type(exc).__name__}: {first_line(exc)}"
        raise ResultsError(f"the Optuna study {name!r} in {shown} cannot be read ({what})") from None


def param_importances(results_or_study: SearchResults | optuna.Study) -> pd.Series:
    """Each searched knob's share of the importance (summing to 1), largest first, by Optuna's PED-ANOVA.

    Raises ResultsError, in one line, where the study has too few COMPLETE trials for the numbers to mean
    anything (see the module's docstring) or where their values do not tell the knobs apart."""
    import optuna
    import pandas as pd
    from optuna.importance import PedAnovaImportanceEvaluator

    study = open_study(results_or_study) if isinstance(results_or_study, SearchResults) else results_or_study
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    finished = sum(1 for t in trials if t.value is not None and math.isfinite(t.value))
    needed = trials_needed()
    if finished < needed:
        raise ResultsError(
            f"too few finished trials for parameter importances: the study has {finished} COMPLETE "
            f"(stopped and failed trials do not count), and Optuna's PED-ANOVA needs {needed} for "
            f"{MIN_TOP_TRIALS} in the best {TARGET_QUANTILE:.0%} it compares with the rest"
        )
    # the evaluator's own numbers: get_param_importances would turn all zeros into an equal share per knob
    raw = PedAnovaImportanceEvaluator(target_quantile=TARGET_QUANTILE).evaluate(study)
    total = sum(raw.values())
    if not total > 0:
        raise ResultsError(
            f"parameter importances: the {finished} finished trials' values do not tell the knobs apart "
            "(Optuna's PED-ANOVA finds no knob whose values differ in the best trials)"
        )
    shares = pd.Series({name: value / total for name, value in raw.items()}, name="importance", dtype=float)
    return shares.sort_values(ascending=False)
