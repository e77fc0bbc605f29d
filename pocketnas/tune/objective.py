"""The objective of a tuning trial: retrain a width and embedding size on the proxy schedule."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pocketnas.config import RetrainConfig
from pocketnas.errors import PocketNasError
from pocketnas.retrain.train import build_network, network_spec, run_retrain
from pocketnas.search_space.genotype import Genotype
from pocketnas.tools.flops import count_complexity
from pocketnas.tune.settings import TuneSettings
from pocketnas.tune.space import proxy_config, trial_config

logger = logging.getLogger(__name__)

TRIALS_FOLDER = "trials"


def trial_folder_name(number: int) -> str:
    return f"{TRIALS_FOLDER}/trial_{number:04d}"


class TrialObjective:
    """Callable objective for `optuna.Study.optimize`.

    A trial suggests `channels` (its cell count comes from the width table) and `embedding_size`,
    counts the network's MFLOPs and parameters, and retrains it on the proxy schedule. It returns
    the mean verification accuracy after the last epoch, alone (objective "accuracy") or with the
    cost (objective "multi").

    A trial whose parameters equal those of a completed trial copies that trial's values, because
    the proxy run uses the same seed and would repeat the same computation. A trial queued to
    replace one whose worker died continues that trial's run folder from its last checkpoint,
    when the folder is on this machine.
    """

    def __init__(
        self,
        settings: TuneSettings,
        data_dir: str | os.PathLike[str],
        study_dir: Path,
        bins: Sequence[str | os.PathLike[str]],
        show_progress: bool,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.study_dir = study_dir
        self.bins = list(bins)
        self.bin_names = [Path(b).stem for b in self.bins]
        self.show_progress = show_progress
        self.genotype: Genotype = settings.parsed_genotype()
        self.proxy: RetrainConfig = proxy_config(
            settings.base, settings.proxy_epochs, settings.proxy_steps
        )
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        settings = self.settings
        channels = trial.suggest_categorical("channels", sorted(settings.widths))
        embedding_size = trial.suggest_categorical("embedding_size", settings.embedding_sizes)
        layers = settings.widths[int(channels)]
        config = trial_config(
            self.proxy, int(channels), layers, int(embedding_size), settings.genotype
        )
        config.validate()
        network = build_network(network_spec(self.genotype, config))
        complexity = count_complexity(network, config.image_size)
        del network
        cost = complexity.mflops if settings.cost == "mflops" else float(complexity.params)
        trial.set_user_attr("layers", layers)
        trial.set_user_attr("mflops", complexity.mflops)
        trial.set_user_attr("params", complexity.params)
        trial.set_user_attr("worker", self.worker)

        twin = self._completed_twin(trial)
        if twin is not None:
            logger.info(
                "trial %d: same parameters as completed trial %d; copying its result",
                trial.number,
                twin.number,
            )
            trial.set_user_attr("copy_of", twin.number)
            trial.set_user_attr("accuracy", twin.user_attrs["accuracy"])
            return self._values(float(twin.user_attrs["accuracy"]), cost)

        # A retry inherits the user attributes of the trial it replaces, run_folder included.
        folder = trial.user_attrs.get("run_folder")
        retry = folder is not None
        if folder is None:
            folder = trial_folder_name(trial.number)
            trial.set_user_attr("run_folder", folder)
        logger.info(
            "trial %d%s: %d channels, %d cells, embedding %d (%.2f MFLOPs, %s parameters)",
            trial.number,
            f" (retry of the run in {folder})" if retry else "",
            channels,
            layers,
            embedding_size,
            complexity.mflops,
            f"{complexity.params:,}",
        )
        accuracies: dict[str, float] = dict(trial.user_attrs.get("epoch_accuracy", {}))

        def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
            accuracy = self._mean_accuracy(metrics)
            accuracies[str(epoch)] = accuracy
            trial.set_user_attr("epoch_accuracy", accuracies)
            if len(trial.study.directions) > 1:
                return  # Optuna records no intermediate values for several objectives.
            trial.report(accuracy, epoch)
            if trial.should_prune():
                logger.info(
                    "trial %d pruned after epoch %d (accuracy %.4f)", trial.number, epoch, accuracy
                )
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at accuracy {accuracy:.4f}")

        run_dir = self.study_dir / folder
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        result = run_retrain(
            config,
            self.genotype,
            self.data_dir,
            run_dir,
            verification_bins=self.bins,
            resume=retry,
            show_progress=self.show_progress,
            on_epoch_end=on_epoch_end,
        )
        # Prefer the accuracy recorded when the last epoch ended. A killed worker may have
        # recorded it before this retry resumed the finished run.
        last = str(self.proxy.epochs)
        if last in accuracies:
            accuracy = accuracies[last]
        elif all(f"{name}_accuracy" in result.metrics for name in self.bin_names):
            accuracy = self._mean_accuracy(result.metrics)
        else:
            raise PocketNasError(
                f"{run_dir}: finished run without a recorded accuracy of epoch {last}"
            )
        trial.set_user_attr("accuracy", accuracy)
        return self._values(accuracy, cost)

    def _values(self, accuracy: float, cost: float) -> float | tuple[float, float]:
        if self.settings.objective == "multi":
            return accuracy, cost
        return accuracy

    def _mean_accuracy(self, metrics: dict[str, Any]) -> float:
        values = [float(metrics[f"{name}_accuracy"]) for name in self.bin_names]
        return sum(values) / len(values)

    @staticmethod
    def _completed_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.params == trial.params and "accuracy" in other.user_attrs:
                return other
        return None
