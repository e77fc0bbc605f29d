"""Trial entry point of the NNI experiments: `python -m pocketnas.experiments.trial KIND ...`.

Each kind calls one pocketnas library function and reports its metric per epoch and at the end:

- `search`: the DARTS search (`run_search`); metric: classification accuracy on the architecture
  half. The genotype is written to `OUT/run/genotype.json`.
- `tune`: a short proxy retraining (`run_retrain`) at the trial's initial channels (the cell count
  comes from `WIDTH_CELLS`) and embedding size; metric: verification accuracy.
- `nas`: a short proxy retraining of the genotype that the trial's parameters describe (the
  `genotype` search space); metric: verification accuracy. The genotype is written to
  `OUT/genotype.json`.
- `retrain`: one retraining, with distillation when the preset or options ask for it; metric:
  verification accuracy.

Inside an NNI trial (NNI_PLATFORM set), the parameters come from `nni.get_next_parameter()` and
the metrics go to `nni.report_intermediate_result` and `nni.report_final_result`, as dictionaries
whose `default` entry is the metric. Outside NNI, the parameters come from `--params` and NNI is
never imported. In both cases `OUT/trial.json` gets the parameters and every reported metric.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pocketnas.config import RetrainConfig, SearchConfig, from_mapping, load_preset, override
from pocketnas.errors import ConfigError, PocketNasError
from pocketnas.experiments.nni_support import import_nni, running_under_nni
from pocketnas.fileio import atomic_write_json, atomic_write_text
from pocketnas.search_space.choices import genotype_from_sample, inputs_label
from pocketnas.search_space.genotype import Genotype, load_genotype
from pocketnas.search_space.widths import cells_for_width

logger = logging.getLogger("pocketnas.experiments.trial")

KINDS = ("search", "tune", "nas", "retrain")
EXIT_USER_ERROR = 2


class Reporter:
    """Records the metrics of a trial and, inside an NNI trial, sends them to NNI.

    `nni` is the imported NNI package inside an NNI trial and None outside, where nothing is sent.
    """

    def __init__(self, nni: ModuleType | None = None) -> None:
        self.nni = nni
        self.intermediate_results: list[dict[str, float]] = []
        self.final_result: dict[str, float] | None = None

    def intermediate(self, metrics: dict[str, Any]) -> None:
        """Report one epoch's metrics; NNI's tuner receives `metrics["default"]`."""
        result = _finite_numbers(metrics)
        if "default" not in result:
            logger.warning("metric of this epoch is not a finite number, so it is not reported")
            return
        self.intermediate_results.append(result)
        if self.nni is not None:
            self.nni.report_intermediate_result(result)

    def final(self, metrics: dict[str, Any]) -> None:
        """Report the final metrics; NNI's tuner receives `metrics["default"]`.

        Raises:
            PocketNasError: the final metric is not a finite number, so the trial fails.
        """
        result = _finite_numbers(metrics)
        if "default" not in result:
            raise PocketNasError(
                f"the trial's final metric is {metrics.get('default')!r}, not a finite number"
            )
        self.final_result = result
        if self.nni is not None:
            self.nni.report_final_result(result)


def _finite_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Keep the entries that are finite numbers, because NNI's manager reads the metrics as JSON."""
    finite = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            finite[key] = value
    return finite


@dataclass
class TrialOptions:
    """Settings of one trial from the command line; unset values keep the preset's."""

    data: str
    out: Path
    preset: str | None = None
    genotype: str | None = None
    bins: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = False


def apply_parameters(config: Any, parameters: dict[str, Any], source: str) -> Any:
    """Return a copy of `config` with `parameters` as config keys (checked like a preset's).

    Raises:
        ConfigError: a parameter is not a key of the config, or has the wrong type.
    """
    data = dataclasses.asdict(config)
    data.update(parameters)
    return from_mapping(type(config), data, source)


def _verification_metrics(metrics: dict[str, Any], bins: Sequence[str]) -> dict[str, Any]:
    """Add `default`, the mean verification accuracy over the `.bin` sets, to epoch metrics."""
    values = [metrics.get(f"{Path(path).stem}_accuracy") for path in bins]
    accuracies = [value for value in values if isinstance(value, float)]
    result = dict(metrics)
    if accuracies and len(accuracies) == len(values):
        result["default"] = sum(accuracies) / len(accuracies)
    return result


def search_trial(options: TrialOptions, parameters: dict[str, Any], reporter: Reporter) -> Genotype:
    """Run the DARTS search with `parameters` as search config keys (e.g. `seed`)."""
    from pocketnas.searchers.search import run_search

    config = load_preset(SearchConfig, options.preset or "pocketnet-search")
    config = override(config, **options.overrides)
    config = apply_parameters(config, parameters, "trial parameters")

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        reporter.intermediate({**metrics, "default": metrics["val_accuracy"]})

    result = run_search(
        config,
        options.data,
        options.out / "run",
        show_progress=options.show_progress,
        on_epoch_end=on_epoch_end,
    )
    reporter.final({"default": result.val_accuracy, "epochs": result.epochs})
    return result.genotype


def _retrain_config(options: TrialOptions) -> RetrainConfig:
    config = load_preset(RetrainConfig, options.preset or "pocketnet-s128")
    return override(config, **options.overrides)


def _preset_genotype(options: TrialOptions, config: RetrainConfig) -> Genotype | None:
    from pocketnas.retrain.models import config_genotype

    if config.arch != "derived":
        return None
    genotype = load_genotype(options.genotype) if options.genotype else config_genotype(config)
    if genotype is None:
        raise ConfigError("the preset carries no genotype; give one with --genotype FILE")
    return genotype


def _proxy_retrain(
    options: TrialOptions,
    config: RetrainConfig,
    genotype: Genotype | None,
    reporter: Reporter,
) -> dict[str, Any]:
    """Retrain, report the mean verification accuracy per epoch and at the end."""
    from pocketnas.retrain.models import build_network, network_spec
    from pocketnas.retrain.train import run_retrain
    from pocketnas.tools.flops import count_complexity

    if not options.bins:
        raise ConfigError("the trial's metric is verification accuracy: give --bin FILE...")
    accuracies: list[float] = []

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        result = _verification_metrics(metrics, options.bins)
        if "default" in result:
            accuracies.append(result["default"])
        reporter.intermediate(result)

    result = run_retrain(
        config,
        genotype,
        options.data,
        options.out / "run",
        verification_bins=options.bins,
        show_progress=options.show_progress,
        on_epoch_end=on_epoch_end,
    )
    # Parameters and MFLOPs for one 112x112 image, the figures that `pocketnas flops` prints.
    complexity = count_complexity(
        build_network(network_spec(genotype, dataclasses.replace(config, image_size=112))), 112
    )
    final = _verification_metrics(result.metrics, options.bins)
    final.update(
        {
            "best_accuracy": max(accuracies) if accuracies else float("nan"),
            "params": complexity.params,
            "mflops": complexity.mflops,
            "channels": config.channels,
            "layers": config.layers,
            "embedding_size": config.embedding_size,
        }
    )
    reporter.final(final)
    return final


def tune_trial(
    options: TrialOptions, parameters: dict[str, Any], reporter: Reporter
) -> dict[str, Any]:
    """Retrain at the trial's width and embedding size; the cell count follows `WIDTH_CELLS`."""
    config = _retrain_config(options)
    parameters = dict(parameters)
    if "channels" in parameters and "layers" not in parameters:
        parameters["layers"] = cells_for_width(parameters["channels"])
    config = apply_parameters(config, parameters, "trial parameters")
    return _proxy_retrain(options, config, _preset_genotype(options, config), reporter)


def _sample_nodes(parameters: dict[str, Any]) -> int:
    nodes = 0
    while inputs_label("normal", nodes) in parameters:
        nodes += 1
    return nodes


def nas_trial(
    options: TrialOptions, parameters: dict[str, Any], reporter: Reporter
) -> dict[str, Any]:
    """Retrain the genotype that `parameters` describe (a sample of the genotype space)."""
    config = _retrain_config(options)
    if config.arch != "derived":
        raise ConfigError(
            f"a nas trial retrains a derived network, but the preset has arch {config.arch}"
        )
    genotype = genotype_from_sample(parameters, _sample_nodes(parameters))
    atomic_write_text(options.out / "genotype.json", genotype.to_json())
    logger.info("trial genotype: %s", genotype.to_text())
    return _proxy_retrain(options, config, genotype, reporter)


def retrain_trial(
    options: TrialOptions, parameters: dict[str, Any], reporter: Reporter
) -> dict[str, Any]:
    """Retrain once, with `parameters` as retraining config keys (e.g. `kd_weight`)."""
    config = _retrain_config(options)
    config = apply_parameters(config, parameters, "trial parameters")
    return _proxy_retrain(options, config, _preset_genotype(options, config), reporter)


TRIALS: dict[str, Callable[[TrialOptions, dict[str, Any], Reporter], Any]] = {
    "search": search_trial,
    "tune": tune_trial,
    "nas": nas_trial,
    "retrain": retrain_trial,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pocketnas.experiments.trial",
        description="Run one trial of a pocketnas NNI experiment. Inside NNI the parameters come "
        "from NNI and the metrics go to it; outside, give the parameters with --params.",
    )
    parser.add_argument("kind", choices=KINDS, help="what the trial runs")
    parser.add_argument("--data", required=True, help="folder with train.rec, train.idx, property")
    parser.add_argument(
        "--out",
        help="trial folder (default inside NNI: the trial's output folder NNI_OUTPUT_DIR); the "
        "run is written to OUT/run and the reported metrics to OUT/trial.json",
    )
    parser.add_argument("--preset", help="search or retraining preset name or YAML file")
    parser.add_argument("--genotype", help="genotype file (tune, retrain; default: the preset's)")
    parser.add_argument("--bin", nargs="*", default=[], help="verification .bin files")
    parser.add_argument(
        "--params",
        help="outside NNI: the trial's parameters as a JSON object, e.g. "
        '\'{"channels": 16, "embedding_size": 128}\'',
    )
    _add_config_options(parser)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that override keys of the trial's preset."""
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--batch-size", type=int, help="images per batch")
    parser.add_argument("--image-size", type=int, help="side of the network input in pixels")
    parser.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--kd", choices=["none", "template", "multi-step"], help="distillation")
    parser.add_argument("--teacher", help="teacher checkpoint or run folder for distillation")
    parser.add_argument("--teacher-arch", help="architecture of a bare teacher state dict")
    parser.add_argument("--kd-weight", type=float, help="weight of the distillation loss")
    parser.add_argument("--device", help="retraining device: auto, cpu, cuda or cuda:N")


def _options(args: argparse.Namespace) -> TrialOptions:
    out = args.out
    if out is None:
        out = os.environ.get("NNI_OUTPUT_DIR") if running_under_nni() else None
        if not out:
            raise ConfigError("give the trial folder with --out (only NNI trials have a default)")
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "steps_per_epoch": args.steps_per_epoch,
        "workers": args.workers,
        "seed": args.seed,
    }
    if args.kind != "search":
        overrides.update(
            kd=args.kd,
            teacher=args.teacher,
            teacher_arch=args.teacher_arch,
            kd_weight=args.kd_weight,
            device=args.device,
        )
    elif any(
        value is not None
        for value in (args.kd, args.teacher, args.teacher_arch, args.kd_weight, args.device)
    ):
        raise ConfigError(
            "--kd, --teacher, --teacher-arch, --kd-weight and --device apply to retraining "
            "trials, not to search trials"
        )
    return TrialOptions(
        data=args.data,
        out=Path(out),
        preset=args.preset,
        genotype=args.genotype,
        bins=list(args.bin),
        overrides=overrides,
        show_progress=args.progress,
    )


def _parameters(args: argparse.Namespace, nni: ModuleType | None) -> dict[str, Any]:
    if nni is not None:
        if args.params is not None:
            raise ConfigError("--params is for runs outside NNI; inside NNI the tuner sets them")
        parameters = nni.get_next_parameter()
        return dict(parameters or {})
    if args.params is None:
        return {}
    try:
        parameters = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not valid JSON ({exc.msg})") from None
    if not isinstance(parameters, dict):
        raise ConfigError(f"--params must be a JSON object, got {args.params!r}")
    return parameters


def run_trial(args: argparse.Namespace) -> dict[str, Any]:
    """Run the trial that parsed arguments describe and write OUT/trial.json.

    Returns:
        The trial record: kind, parameters, intermediate and final results.
    """
    nni = import_nni("an NNI trial") if running_under_nni() else None
    options = _options(args)
    parameters = _parameters(args, nni)
    options.out.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(nni)
    logger.info("%s trial with parameters %s", args.kind, json.dumps(parameters, sort_keys=True))
    outcome = TRIALS[args.kind](options, parameters, reporter)
    record: dict[str, Any] = {
        "kind": args.kind,
        "parameters": parameters,
        "intermediate": reporter.intermediate_results,
        "final": reporter.final_result,
        "under_nni": nni is not None,
    }
    if isinstance(outcome, Genotype):
        record["genotype"] = outcome.to_dict()
    atomic_write_json(options.out / "trial.json", record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("pocketnas")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        run_trial(args)
    except PocketNasError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = lines[0] if lines else type(exc).__name__
        print(f"pocketnas trial: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        root.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
