"""One tuning worker: create or join an Optuna study, run its trials, write the study's outputs.

Every worker writes into `OUT/STUDY/`:

- `trials/trial_NNNN/`: the proxy retraining run of each trial it ran (a pocketnas run folder);
- `trials.csv`: every trial of the study, from all workers, with state and results;
- `pareto.csv` and `pareto.png`: the Pareto front of accuracy and cost, and its plot;
- `best.yaml`: the chosen trial as a retraining preset with the base preset's full schedule.

The CSV files, the plot and the preset describe the whole study as the database stores it when the
worker finishes, so the last worker to finish leaves the complete picture.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pocketnas.data.dataset import FaceRecordDataset
from pocketnas.errors import ConfigError, PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet
from pocketnas.tune.front import (
    TrialRow,
    choose_trial,
    export_preset,
    format_cost,
    pareto_front,
    plot_front,
    save_png,
    trial_rows,
    write_front_csv,
    write_trials_csv,
)
from pocketnas.tune.objective import TRIALS_FOLDER, TrialObjective
from pocketnas.tune.settings import (
    SETTINGS_KEY,
    TuneRequest,
    TuneSettings,
    check_study_name,
    joined_settings,
    new_settings,
)
from pocketnas.tune.storage import (
    default_storage_url,
    describe_database_error,
    describe_url,
    open_storage,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    """The state of a study when one worker finished, and the files it wrote."""

    study: str
    storage: str  # the URL without its password
    folder: Path  # OUT/STUDY
    settings: TuneSettings
    rows: list[TrialRow]  # every trial of the study
    front: list[TrialRow]  # cheapest first
    chosen: TrialRow | None  # the exported trial
    trials_csv: Path
    front_csv: Path
    plot: Path
    preset: Path | None  # None when no completed trial fits the budget

    def counts(self) -> dict[str, int]:
        """Number of trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
        return dict(Counter(row.state for row in self.rows))


def run_tune(request: TuneRequest, show_progress: bool = True) -> TuneResult:
    """Run `request.trials` trials of a study as one worker and write the study's outputs.

    With `request.resume` the worker joins an existing study and takes its settings; otherwise it
    creates the study. Trials that raise a PocketNasError (a diverging loss, say) are recorded
    as failed and the worker goes on.

    Raises:
        ConfigError: invalid options, a study that already exists (without resume) or does not
            (with resume), a storage that cannot be opened, or options that contradict the
            study's settings.
        PocketNasError: unreadable data or verification files.
    """
    check_study_name(request.study)
    if request.trials < 0:
        raise ConfigError(f"--trials must be 0 or more, got {request.trials}")
    out = Path(request.out)
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: parent folder {out.parent} does not exist")
    study_dir = out / request.study
    url = request.storage or default_storage_url(out)
    safe_url = describe_url(url)
    # A worker without trials (creating a study, or rewriting the outputs) reads no data.
    bins = _verification_bins(request) if request.trials > 0 else []

    try:
        if request.resume:
            study, settings = _join_study(request, url, safe_url, bins)
        else:
            study, settings = _new_study(request, url, safe_url, bins, study_dir)
        (study_dir / TRIALS_FOLDER).mkdir(parents=True, exist_ok=True)

        if request.trials > 0:
            objective = TrialObjective(settings, request.data, study_dir, bins, show_progress)
            study.optimize(
                objective,
                n_trials=request.trials,
                catch=(PocketNasError,),
                callbacks=[functools.partial(_log_trial, settings.cost)],
                gc_after_trial=True,
            )
        _fail_stale_trials(study)
        return write_outputs(study, settings, study_dir, safe_url, request.budget)
    except (sqlalchemy.exc.DatabaseError, optuna.exceptions.StorageInternalError) as exc:
        # A damaged page that the checks at opening missed, or a server that went away.
        raise ConfigError(
            f"storage {safe_url}: database error ({describe_database_error(exc)}); if the "
            "database is damaged, restore it from a copy or start a new one"
        ) from None


def _join_study(
    request: TuneRequest, url: str, safe_url: str, bins: list[str]
) -> tuple[optuna.Study, TuneSettings]:
    out = Path(request.out)
    if request.storage is None and not (out / "tune.db").is_file():
        raise ConfigError(
            f"{out / 'tune.db'}: study database not found; leave out --resume to create the "
            "study, or give its database with --storage"
        )
    reader = open_storage(url)
    settings = _stored_settings(reader, request.study, safe_url)
    reader.engine.dispose()
    settings = joined_settings(request, settings, request.study)
    if request.trials > 0:
        _check_inputs(request.data, bins, settings.base.image_size)
    # All workers record heartbeats and detect dead workers with the study's interval and grace.
    storage = open_storage(url, settings.heartbeat_interval, settings.grace_period)
    study = optuna.load_study(
        study_name=request.study,
        storage=storage,
        sampler=_sampler(request.seed),
        pruner=_pruner(settings),
    )
    logger.info("joined study %s in %s", request.study, safe_url)
    return study, settings


def _new_study(
    request: TuneRequest, url: str, safe_url: str, bins: list[str], study_dir: Path
) -> tuple[optuna.Study, TuneSettings]:
    settings = new_settings(request)
    if request.trials > 0:
        _check_inputs(request.data, bins, settings.base.image_size)
    Path(request.out).mkdir(exist_ok=True)
    storage = open_storage(url, settings.heartbeat_interval, settings.grace_period)
    _check_new_study(storage, request.study, safe_url)
    if (study_dir / TRIALS_FOLDER).is_dir() and any((study_dir / TRIALS_FOLDER).iterdir()):
        raise ConfigError(
            f"{study_dir}: contains the trials of an earlier study named {request.study!r}; "
            "choose another --study or --out"
        )
    return _create_study(storage, request, settings, safe_url), settings


def _verification_bins(request: TuneRequest) -> list[str]:
    if not Path(request.data).is_dir():
        raise ConfigError(f"{request.data}: training data folder not found")
    if request.bins:
        return list(request.bins)
    default = Path(request.data) / "verification.bin"
    if default.is_file():
        return [str(default)]
    raise ConfigError(
        f"no verification set: {default} does not exist; give .bin files with --bin FILE..."
    )


def _check_inputs(data_dir: str, bins: list[str], image_size: int) -> None:
    """Open the training set and load each verification set once, before any trial starts."""
    dataset = FaceRecordDataset(data_dir, train=True, normalize=False)
    dataset.close()
    for path in bins:
        VerificationSet.load(path, image_size)


def _sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    # TPE handles one and two objectives. Its constant liar steers parallel workers away from the
    # parameters of each other's running trials.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(settings: TuneSettings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        # Optuna's defaults: no pruning before 5 trials have finished.
        return optuna.pruners.MedianPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.proxy_epochs)
    return optuna.pruners.NopPruner()


def _stored_settings(
    storage: optuna.storages.BaseStorage, study: str, safe_url: str
) -> TuneSettings:
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        known = ", ".join(names[:10]) if names else "none"
        raise ConfigError(
            f"study {study!r} not found in {safe_url} (studies there: {known}); leave out --resume "
            "to create it"
        ) from None
    data = storage.get_study_user_attrs(study_id).get(SETTINGS_KEY)
    if data is None:
        raise ConfigError(
            f"study {study!r} in {safe_url} has no pocketnas tune settings: it was not created by "
            "pocketnas tune, or its first worker is still starting (try again in a few seconds)"
        )
    return TuneSettings.from_dict(data, f"study {study!r} in {safe_url}")


def _check_new_study(storage: optuna.storages.BaseStorage, study: str, safe_url: str) -> None:
    try:
        storage.get_study_id_from_name(study)
    except KeyError:
        return
    raise ConfigError(
        f"study {study!r} already exists in {safe_url}; add --resume to continue it, or choose "
        "another --study name"
    )


def _create_study(
    storage: optuna.storages.BaseStorage,
    request: TuneRequest,
    settings: TuneSettings,
    safe_url: str,
) -> optuna.Study:
    directions = [StudyDirection.MAXIMIZE]
    if settings.objective == "multi":
        directions.append(StudyDirection.MINIMIZE)
    try:
        study = optuna.create_study(
            study_name=request.study,
            storage=storage,
            sampler=_sampler(request.seed),
            pruner=_pruner(settings),
            directions=directions,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"study {request.study!r} already exists in {safe_url}; add --resume to continue it, "
            "or choose another --study name"
        ) from None
    study.set_user_attr(SETTINGS_KEY, settings.to_dict())
    logger.info(
        "created study %s in %s: objective %s, cost %s, pruner %s, %d proxy epoch(s)",
        request.study,
        safe_url,
        settings.objective,
        settings.cost,
        settings.pruner,
        settings.proxy_epochs,
    )
    return study


def _log_trial(cost: str, study: optuna.Study, trial: FrozenTrial) -> None:
    if trial.state == TrialState.COMPLETE:
        assert trial.values is not None
        logger.info(
            "trial %d finished: accuracy %.4f%s",
            trial.number,
            trial.values[0],
            f", {format_cost(trial.values[1], cost)}" if len(trial.values) > 1 else "",
        )
    elif trial.state == TrialState.PRUNED:
        pass  # The objective logged the epoch and the accuracy at which it pruned the trial.
    else:
        logger.warning("trial %d ended as %s", trial.number, trial.state.name)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers failed and queue their retries before this worker leaves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        logger.info(
            "%d trial(s) of dead workers wait for a retry: start a worker with --resume",
            len(waiting),
        )


def write_outputs(
    study: optuna.Study,
    settings: TuneSettings,
    study_dir: Path,
    safe_url: str,
    budget: float | None,
) -> TuneResult:
    """Write trials.csv, pareto.csv, pareto.png and best.yaml of the whole study."""
    rows = trial_rows(study.get_trials(deepcopy=False))
    front = pareto_front(rows, settings.cost)
    chosen = choose_trial(rows, settings.cost, budget)
    trials_csv = study_dir / "trials.csv"
    front_csv = study_dir / "pareto.csv"
    plot = study_dir / "pareto.png"
    write_trials_csv(trials_csv, rows)
    write_front_csv(front_csv, front)

    completed = sum(1 for row in rows if row.state == "COMPLETE")
    repeats = sum(1 for row in rows if row.state == "COMPLETE" and row.copy_of is not None)
    title = f"study {study.study_name}: {completed - repeats} trained trial(s)"
    if repeats:
        title += f", {repeats} repeated parameters (not plotted)"
    figure = plot_front(rows, front, chosen, settings.cost, title, settings.base.image_size)
    save_png(figure, plot)

    # The preset always matches this worker's choice: an older one that no longer fits goes.
    preset: Path | None = study_dir / "best.yaml"
    assert preset is not None
    if chosen is not None:
        export_preset(preset, settings, chosen, study.study_name, budget)
    else:
        if completed:
            assert budget is not None
            logger.warning(
                "no completed trial costs at most %s; no preset exported",
                format_cost(budget, settings.cost),
            )
        preset.unlink(missing_ok=True)
        preset = None

    return TuneResult(
        study=study.study_name,
        storage=safe_url,
        folder=study_dir,
        settings=settings,
        rows=rows,
        front=front,
        chosen=chosen,
        trials_csv=trials_csv,
        front_csv=front_csv,
        plot=plot,
        preset=preset,
    )
