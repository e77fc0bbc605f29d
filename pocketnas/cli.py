"""Command-line interface: argument parsing only; each subcommand calls one library function.

Errors caused by user input (`PocketNasError`) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pocketnas.errors import PocketNasError
from pocketnas.search_space.widths import EMBEDDING_SIZES, WIDTH_CELLS

logger = logging.getLogger("pocketnas")

EXIT_USER_ERROR = 2


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by search and retrain; each overrides the preset's value when given."""
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="images per batch (per data half in a search)")
    p.add_argument("--image-size", type=int, help="side of the network input in pixels")
    p.add_argument("--steps-per-epoch", type=int, help="cap on steps per epoch")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "steps_per_epoch": args.steps_per_epoch,
        "workers": args.workers,
        "seed": args.seed,
    }


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="DARTS search of a cell genotype on face data")
    p.add_argument("--data", required=True, help="folder with train.rec, train.idx and property")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--preset", help="search preset name or YAML file (default: pocketnet-search)")
    p.add_argument("--order", choices=["first", "second"], help="architecture gradient order")
    p.add_argument(
        "--arch-gradient",
        choices=["darts", "authors"],
        help="'darts' (default): alpha follows the DARTS gradient; 'authors': also adds the "
        "training-loss gradient of alpha, as the PocketNet authors' search loop does",
    )
    p.add_argument(
        "--searcher",
        choices=["darts", "nni-darts", "nni-gumbel", "nni-proxyless"],
        default="darts",
        help="'darts' (default): pocketnas's DARTS; 'nni-darts', 'nni-gumbel', 'nni-proxyless': "
        "NNI 3.0's one-shot DARTS, GumbelDARTS or Proxyless over the same cells (first order, "
        "no --resume; needs the nni extra)",
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_search)


def _add_experiments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiments", help="NNI experiments: search spaces")
    experiments_sub = p.add_subparsers(
        dest="experiments_command", required=True, metavar="EXPERIMENTS_COMMAND"
    )
    p = experiments_sub.add_parser(
        "space",
        help="write an NNI search space JSON generated from pocketnas's registries",
        description="'genotype': an operation choice per edge and an input choice per node of "
        "the normal and reduction cells, over every registered operation but 'none'. "
        "'width-embedding': initial channels from the width table and the embedding size.",
    )
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument(
        "--space",
        choices=["genotype", "width-embedding"],
        default="genotype",
        help="which search space (default: genotype)",
    )
    p.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell (genotype)")
    p.set_defaults(func=_cmd_experiments_space)


def _cmd_experiments_space(args: argparse.Namespace) -> int:
    from pocketnas.experiments.space import write_search_space
    from pocketnas.fileio import ensure_parent

    ensure_parent(args.out)
    write_search_space(args.space, args.out, nodes=args.nodes)
    print(f"wrote {args.out}")
    return 0


def _add_retrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="retrain a genotype's network or an IResNet teacher with a margin head",
        description="Train from scratch with ArcFace, CosFace or the combined margin, optionally "
        "distilling from a teacher. Runs under torchrun for several processes (NCCL on GPUs, "
        "gloo on CPUs); only rank 0 writes. --resume continues a run to the exact step.",
    )
    p.add_argument(
        "--genotype",
        help="genotype JSON (or Genotype(...) text) file (default: the preset's genotype)",
    )
    p.add_argument("--data", required=True, help="folder with train.rec, train.idx and property")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--preset", help="retraining preset name or YAML file (default: pocketnet-s128)")
    p.add_argument("--bin", nargs="*", default=[], help="verification .bin files")
    p.add_argument(
        "--arch",
        choices=["derived", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"],
        help="network: the genotype's derived network, or an IResNet teacher",
    )
    p.add_argument("--embedding-size", type=int, help="embedding dimension")
    p.add_argument("--head", choices=["arcface", "cosface", "combined"], help="margin head")
    p.add_argument("--margin-s", type=float, help="logit scale s")
    p.add_argument("--margin-m", type=float, help="ArcFace or CosFace margin m")
    p.add_argument(
        "--kd",
        choices=["none", "template", "multi-step"],
        help="knowledge distillation: one fixed teacher, or the teacher's checkpoint of each epoch",
    )
    p.add_argument(
        "--teacher",
        help="template: teacher checkpoint file; multi-step: the teacher's run folder",
    )
    p.add_argument(
        "--teacher-arch", help="architecture of a bare teacher state dict (e.g. iresnet100)"
    )
    p.add_argument("--kd-weight", type=float, help="weight of the distillation loss (default 100)")
    p.add_argument("--lr", type=float, help="learning rate for the reference batch")
    p.add_argument("--schedule", choices=["step", "cosine"], help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up length in epochs")
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="compute precision"
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--eval-every", type=int, help="verification every N steps, besides epochs")
    p.add_argument("--checkpoint-every", type=int, help="write checkpoints/last.pt every N steps")
    p.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic kernels"
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_retrain)


def _add_data_convert(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "convert",
        help="image folder (one subfolder per identity) to train.rec/.idx/property, or back",
        description="Convert between an image folder and insightface's RecordIO set. A folder "
        "holding train.rec (or a .rec file) is unpacked into one folder per class id; any other "
        "folder is packed. DST must not exist yet, or be an empty folder.",
    )
    p.add_argument("src", help="image folder, or folder with train.rec/train.idx/property")
    p.add_argument("dst", help="output folder (new or empty)")
    p.add_argument("--workers", type=int, default=1, help="processes that read and decode images")
    p.add_argument(
        "--landmarks",
        help="file with one line per image: its path (relative to SRC) and x1 y1 ... x5 y5 of "
        "the eyes, nose tip and mouth corners; faces are aligned to the 112x112 ArcFace crop",
    )
    p.set_defaults(func=_cmd_data_convert)


def _add_data_make_bin(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "make-bin",
        help="verification .bin from an image folder and an LFW-style pairs.txt",
        description="Write a verification .bin like insightface's lfw.bin. Images are looked up "
        "as FOLDER/<name>/<name>_<4-digit number>.jpg, as in LFW.",
    )
    p.add_argument("folder", help="folder with one subfolder per identity")
    p.add_argument("--pairs", required=True, help="pairs file: 'FOLDS PAIRS' header, then pairs")
    p.add_argument("--out", required=True, help=".bin file to write")
    p.add_argument("--landmarks", help="landmark file to align faces (see 'data convert')")
    p.set_defaults(func=_cmd_data_make_bin)


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from pocketnas.tools.convert import convert

    summary = convert(
        args.src,
        args.dst,
        workers=args.workers,
        landmarks=args.landmarks,
        show_progress=not args.quiet,
    )
    height, width = summary.image_size
    print(
        f"wrote {summary.images} images of {summary.identities} identities "
        f"({height}x{width}) to {summary.destination}"
    )
    return 0


def _cmd_data_make_bin(args: argparse.Namespace) -> int:
    from pocketnas.tools.convert import make_verification_bin

    pairs = make_verification_bin(
        args.folder, args.pairs, args.out, landmarks=args.landmarks, show_progress=not args.quiet
    )
    print(f"wrote {pairs} pairs to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketnas",
        description="NAS-first AutoML for lightweight face recognition.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only, no bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on synthetic face identities")
    p.add_argument("--out", required=True, help="output folder (created; must not hold a run)")
    p.add_argument("--preset", default="demo", help="demo preset name or YAML file")
    p.set_defaults(func=_cmd_demo)

    data = sub.add_parser("data", help="face data: synthesize, inspect and convert")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data_sub.add_parser("synth", help="write synthetic face identities in insightface's format")
    p.add_argument("dir", help="output folder (created if its parent exists)")
    p.add_argument("--identities", type=int, default=300, help="training identities")
    p.add_argument("--images-per-identity", type=int, default=20, help="images per identity")
    p.add_argument("--pairs", type=int, default=1200, help="verification pairs (unseen identities)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    p.set_defaults(func=_cmd_synth)
    p = data_sub.add_parser("inspect", help="describe a .rec/.idx folder or a .bin file")
    p.add_argument("path", help="folder with train.rec/train.idx/property, or a .bin file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_inspect)
    _add_data_convert(data_sub)
    _add_data_make_bin(data_sub)

    _add_search(sub)
    _add_experiments(sub)

    p = sub.add_parser("derive", help="genotype JSON from a search run or from Genotype(...) text")
    p.add_argument("run", nargs="?", help="search run folder or search checkpoint")
    p.add_argument("--from-string", dest="from_string", help="the authors' Genotype(...) text")
    p.add_argument("--out", help="genotype JSON file to write (default: print it)")
    p.set_defaults(func=_cmd_derive)

    p = sub.add_parser("render", help="draw the normal and reduction cells of a genotype")
    p.add_argument("genotype", help="genotype JSON (or Genotype(...) text) file")
    p.add_argument("--out", required=True, help="output folder (created if its parent exists)")
    p.add_argument(
        "--format",
        nargs="+",
        default=["png", "svg"],
        choices=["png", "svg", "pdf"],
        help="picture formats",
    )
    p.set_defaults(func=_cmd_render)

    _add_retrain(sub)

    _add_tune(sub)

    _add_eval(sub)
    _add_report(sub)

    p = sub.add_parser("flops", help="parameters and MFLOPs for one 3x112x112 image")
    p.add_argument("--preset", help="retraining preset name or YAML file")
    p.add_argument(
        "--arch", help="IResNet teacher (iresnet18, iresnet34, iresnet50, iresnet100) instead"
    )
    p.add_argument("--genotype", help="genotype file (default: PocketNet's)")
    p.add_argument("--channels", type=int, help="initial channels")
    p.add_argument("--layers", type=int, help="number of cells")
    p.add_argument("--embedding", type=int, help="embedding size")
    p.add_argument("--image-size", type=int, default=112, help="input side in pixels")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_flops)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from pocketnas.demo import run_demo

    summary = run_demo(args.out, preset=args.preset, show_progress=not args.quiet)
    verification = summary["verification"]
    distillation = summary["distillation"]
    print(f"pictures: {summary['pictures']['folder']}")
    print(f"report: {summary['report']}")
    print(f"summary: {Path(args.out) / 'summary.json'}")
    print(
        f"teacher {distillation['teacher']['accuracy']:.4f}, student without distillation "
        f"{distillation['without_kd']['accuracy']:.4f}, with multi-step distillation "
        f"{distillation['with_kd']['accuracy']:.4f}"
    )
    print(
        f"verification accuracy on unseen identities: {verification['accuracy']:.4f} "
        f"+- {verification['accuracy_std']:.4f} (raw-pixel baseline "
        f"{summary['baseline']['raw_pixel_accuracy']:.4f})"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pocketnas.data.synth import synthesize

    summary = synthesize(
        args.dir,
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        pairs=args.pairs,
        seed=args.seed,
        image_size=args.image_size,
        show_progress=not args.quiet,
    )
    print(
        f"wrote {summary.num_train_images} images of {summary.num_classes} identities and "
        f"{summary.num_pairs} verification pairs to {args.dir}"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pocketnas.data.inspect import inspect_path

    info = inspect_path(args.path)
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    damaged = info.get("first_damaged_record")
    if damaged:
        source = info.get("rec", args.path)
        raise PocketNasError(
            f"{source}: {info['damaged_records']} damaged record(s); first: {damaged['problem']}"
        )
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from pocketnas.config import SearchConfig, load_preset, override
    from pocketnas.searchers.search import run_search

    config = load_preset(SearchConfig, args.preset or "pocketnet-search")
    config = override(
        config, order=args.order, arch_gradient=args.arch_gradient, **_run_overrides(args)
    )
    if args.searcher == "darts":
        result = run_search(
            config, args.data, args.out, resume=args.resume, show_progress=not args.quiet
        )
    else:
        from pocketnas.searchers.nni_oneshot import run_nni_search

        if args.resume:
            raise PocketNasError(f"--searcher {args.searcher} cannot resume; only darts can")
        if args.order is None and config.order != "first":
            logger.info("--searcher %s computes first-order gradients only", args.searcher)
            config = override(config, order="first")
        result = run_nni_search(
            args.searcher, config, args.data, args.out, show_progress=not args.quiet
        )
    print(f"genotype: {result.genotype.to_text()}")
    print(f"written to {result.run_dir / 'genotype.json'}")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    from pocketnas.derive.derive import derive_from_path
    from pocketnas.fileio import atomic_write_text
    from pocketnas.search_space.genotype import Genotype

    if (args.run is None) == (args.from_string is None):
        raise PocketNasError("give either a run folder/checkpoint or --from-string TEXT")
    if args.from_string is not None:
        genotype = Genotype.from_text(args.from_string)
    else:
        genotype = derive_from_path(args.run)
    if args.out:
        atomic_write_text(args.out, genotype.to_json())
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(genotype.to_json())
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from pocketnas.analysis.render import render_genotype
    from pocketnas.search_space.genotype import load_genotype

    genotype = load_genotype(args.genotype)
    result = render_genotype(genotype, args.out, formats=tuple(args.format))
    for path in result.files:
        print(path)
    if result.hint:
        print(result.hint, file=sys.stderr)
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from pocketnas.config import RetrainConfig, load_preset, override
    from pocketnas.retrain.train import config_genotype, run_retrain
    from pocketnas.search_space.genotype import load_genotype

    config = load_preset(RetrainConfig, args.preset or "pocketnet-s128")
    config = override(
        config,
        **_run_overrides(args),
        arch=args.arch,
        embedding_size=args.embedding_size,
        head=args.head,
        margin_s=args.margin_s,
        margin_m=args.margin_m,
        kd=args.kd,
        teacher=args.teacher,
        teacher_arch=args.teacher_arch,
        kd_weight=args.kd_weight,
        lr=args.lr,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        precision=args.precision,
        device=args.device,
        eval_every_steps=args.eval_every,
        checkpoint_every_steps=args.checkpoint_every,
        deterministic=args.deterministic,
    )
    genotype = None
    if config.arch == "derived":
        genotype = load_genotype(args.genotype) if args.genotype else config_genotype(config)
        if genotype is None:
            raise PocketNasError("the preset carries no genotype; give one with --genotype FILE")
    result = run_retrain(
        config,
        genotype,
        args.data,
        args.out,
        verification_bins=args.bin,
        resume=args.resume,
        show_progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {result.checkpoint}")
        for key, value in result.metrics.items():
            if key.endswith("_accuracy"):
                print(f"{key}: {value:.4f}")
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="Optuna study of a genotype's width and embedding size, on a proxy schedule",
        description="Each trial retrains the genotype on a short proxy schedule with a suggested "
        "width (initial channels and their cell count) and embedding size, and reports the "
        "verification accuracy after every epoch. Workers on many machines share one study "
        "through --storage. Writes OUT/STUDY/trials.csv, pareto.csv, pareto.png and best.yaml "
        "(a retraining preset). See docs/tune.md.",
    )
    _add_tune_inputs(p)
    _add_tune_objective(p)
    _add_tune_worker(p)
    p.set_defaults(func=_cmd_tune)


def _add_tune_inputs(p: argparse.ArgumentParser) -> None:
    """Add the study, its storage, the data and the genotype options of `pocketnas tune`."""
    p.add_argument("--study", required=True, help="study name (also the folder in --out)")
    p.add_argument(
        "--storage",
        help="database URL shared by the workers, e.g. postgresql://USER:PASSWORD@HOST/DB "
        "(default: sqlite:///OUT/tune.db)",
    )
    p.add_argument(
        "--trials", type=int, required=True, help="trials this worker runs (0: only write outputs)"
    )
    p.add_argument("--data", required=True, help="folder with train.rec, train.idx and property")
    p.add_argument("--out", required=True, help="output folder (created if its parent exists)")
    p.add_argument(
        "--genotype", help="genotype JSON (or Genotype(...) text) file (default: the preset's)"
    )
    p.add_argument(
        "--preset", help="base retraining preset name or YAML file (default: pocketnet-s128)"
    )
    p.add_argument(
        "--bin",
        nargs="*",
        default=[],
        help="verification .bin files (default: DATA/verification.bin)",
    )


def _add_tune_objective(p: argparse.ArgumentParser) -> None:
    """Add the objective, pruning, proxy schedule, search space and budget options."""
    p.add_argument(
        "--objective",
        choices=["multi", "accuracy"],
        help="multi (default): maximise accuracy and minimise cost; accuracy: accuracy alone",
    )
    p.add_argument(
        "--cost", choices=["mflops", "params"], help="cost of the multi objective (default mflops)"
    )
    p.add_argument(
        "--pruner",
        choices=["none", "median", "hyperband"],
        help="pruning on the per-epoch accuracy, --objective accuracy only (default: median "
        "there, none for multi)",
    )
    p.add_argument("--proxy-epochs", type=int, help="epochs of each trial's retraining (default 2)")
    p.add_argument("--proxy-steps", type=int, help="cap on steps per proxy epoch")
    p.add_argument(
        "--widths",
        help="initial channels and their cell counts, CHANNELS:CELLS,... "
        f"(default {','.join(f'{c}:{n}' for c, n in WIDTH_CELLS.items())})",
    )
    p.add_argument(
        "--embedding-sizes",
        type=int,
        nargs="+",
        help=f"embedding sizes (default {' '.join(map(str, EMBEDDING_SIZES))})",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="exported trial: the most accurate one costing at most this (MFLOPs or parameters)",
    )


def _add_tune_worker(p: argparse.ArgumentParser) -> None:
    """Add the heartbeat, seed and resume options of a tuning worker."""
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        help="seconds between trial heartbeats (default 30); stored in the study at creation",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        help="seconds without a heartbeat before a running trial counts as dead and is retried "
        "(default 120); stored in the study at creation",
    )
    p.add_argument("--seed", type=int, help="sampler seed of this worker (default: random)")
    p.add_argument(
        "--resume", action="store_true", help="join the existing study instead of creating it"
    )


def _cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from pocketnas.tune.front import COST_LABELS
    from pocketnas.tune.settings import TuneRequest
    from pocketnas.tune.study import run_tune

    # pocketnas logs each trial itself; Optuna's own handler prints only warnings.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    request = TuneRequest(
        study=args.study,
        data=args.data,
        out=args.out,
        trials=args.trials,
        storage=args.storage,
        bins=args.bin,
        resume=args.resume,
        preset=args.preset,
        genotype=args.genotype,
        objective=args.objective,
        cost=args.cost,
        pruner=args.pruner,
        proxy_epochs=args.proxy_epochs,
        proxy_steps=args.proxy_steps,
        widths=args.widths,
        embedding_sizes=args.embedding_sizes,
        budget=args.budget,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        seed=args.seed,
    )
    result = run_tune(request, show_progress=not args.quiet)
    cost = result.settings.cost
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts().items()))
    print(
        f"study {result.study} in {result.storage}: {len(result.rows)} trials ({counts or 'none'})"
    )
    print(f"Pareto front (accuracy, {COST_LABELS[cost]}), cheapest first:")
    if not result.front:
        print("  (no completed trial yet)")
    for row in result.front:
        print(
            f"  trial {row.number}: {row.describe()}: accuracy {row.accuracy:.4f}, "
            f"{row.mflops:.2f} MFLOPs, {row.params:,} parameters"
        )
    if result.chosen is not None:
        print(
            f"exported trial {result.chosen.number} ({result.chosen.describe()}): {result.preset}"
        )
    print(f"trials: {result.trials_csv}")
    print(f"front: {result.front_csv}")
    print(f"plot: {result.plot}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="10-fold verification accuracy and IJB TAR at FAR of a checkpoint"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="pocketnas checkpoint (search or retraining), run folder, or bare state dict",
    )
    p.add_argument("--preset", help="retraining preset for a bare state dict (e.g. pocketnet-s128)")
    p.add_argument("--genotype", help="genotype file for a bare state dict (default: PocketNet's)")
    p.add_argument("--bin", nargs="+", default=[], help="verification .bin files")
    p.add_argument(
        "--ijb",
        nargs="+",
        default=[],
        metavar="DIR",
        help="IJBB or IJBC folders (loose_crop/, meta/)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for IJB images")
    p.add_argument("--out", help="also write the results, ROC points included, to this JSON file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from pocketnas.config import RetrainConfig, load_preset
    from pocketnas.evaluation.evaluate import evaluate_checkpoint
    from pocketnas.fileio import atomic_write_json, ensure_parent
    from pocketnas.search_space.genotype import load_genotype

    if not args.bin and not args.ijb:
        raise PocketNasError("give verification files with --bin FILE..., or --ijb DIR...")
    if args.batch_size < 1 or args.workers < 0:
        raise PocketNasError(
            f"--batch-size must be at least 1 (got {args.batch_size}) and --workers at least 0 "
            f"(got {args.workers})"
        )
    if args.out:
        ensure_parent(args.out)
    config = load_preset(RetrainConfig, args.preset) if args.preset else None
    genotype = load_genotype(args.genotype) if args.genotype else None
    results = evaluate_checkpoint(
        args.checkpoint,
        args.bin,
        config,
        genotype,
        batch_size=args.batch_size,
        ijb=args.ijb,
        workers=args.workers,
        show_progress=not args.quiet,
    )
    if args.out:
        atomic_write_json(args.out, results)
    if args.json:
        print(json.dumps(results))
        return 0
    print(_evaluation_table(results))
    return 0


def _evaluation_table(results: dict[str, Any]) -> str:
    """Format evaluation results as fixed-width tables: one for .bin sets, one for IJB."""
    lines = []
    if results["sets"]:
        lines.append(
            f"{'set':<20} {'pairs':>6} {'accuracy':>10} {'std':>8} {'VAL@1e-3':>9} {'XNorm':>8}"
        )
        for name, row in results["sets"].items():
            lines.append(
                f"{name:<20} {row['pairs']:>6} {row['accuracy']:>10.4f} "
                f"{row['accuracy_std']:>8.4f} {row['val_at_far_1e-3']:>9.4f} {row['xnorm']:>8.3f}"
            )
    if results["ijb"]:
        if lines:
            lines.append("")
        first = next(iter(results["ijb"].values()))
        fars = list(first["tar_at_far"])
        lines.append(f"{'IJB set':<8} {'pairs':>9} " + " ".join(f"{'TAR@' + f:>10}" for f in fars))
        for name, row in results["ijb"].items():
            tars = " ".join(f"{100 * row['tar_at_far'][far]:>10.2f}" for far in fars)
            lines.append(f"{name:<8} {row['pairs']:>9} {tars}")
        lines.append("(TAR in percent)")
    return "\n".join(lines)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML and Markdown report of runs, with plots")
    p.add_argument("runs", nargs="+", metavar="RUN", help="search or retraining run folders")
    p.add_argument("--bin", nargs="+", default=[], help="evaluate each run on these .bin files")
    p.add_argument(
        "--ijb", nargs="+", default=[], metavar="DIR", help="evaluate each run on these IJB folders"
    )
    p.add_argument(
        "--out",
        help="folder for the comparison of several runs (default: comparison/ in the current "
        "folder); one run gets its report inside its own folder",
    )
    p.add_argument("--json", action="store_true", help="print the written files as one JSON object")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from pocketnas.analysis.report import write_reports

    written = write_reports(
        args.runs,
        comparison_dir=args.out,
        bins=args.bin,
        ijb=args.ijb,
        show_progress=not args.quiet,
    )
    if args.json:
        print(json.dumps({key: [str(p) for p in paths] for key, paths in written.items()}))
        return 0
    for paths in written.values():
        for path in paths:
            print(path)
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from pocketnas.config import RetrainConfig, load_preset, override
    from pocketnas.retrain.train import build_network, config_genotype, network_spec
    from pocketnas.search_space.genotype import load_genotype
    from pocketnas.search_space.published import POCKETNET_GENOTYPE
    from pocketnas.tools.flops import count_complexity

    if args.arch is not None:
        return _print_teacher_flops(args)
    if args.preset is None and None in (args.channels, args.layers, args.embedding):
        raise PocketNasError("give --preset, --arch, or --channels, --layers and --embedding")
    config = load_preset(RetrainConfig, args.preset) if args.preset else RetrainConfig()
    config = override(
        config,
        channels=args.channels,
        layers=args.layers,
        embedding_size=args.embedding,
        image_size=args.image_size,
    )
    config.validate()
    genotype = load_genotype(args.genotype) if args.genotype else config_genotype(config)
    model = build_network(network_spec(genotype or POCKETNET_GENOTYPE, config))
    complexity = count_complexity(model, config.image_size)
    result: dict[str, Any] = {
        "params": complexity.params,
        "mflops": round(complexity.mflops, 2),
        "flops": complexity.flops,
        "channels": config.channels,
        "layers": config.layers,
        "embedding_size": config.embedding_size,
        "image_size": config.image_size,
    }
    _print_complexity(result, args.json)
    return 0


def _print_teacher_flops(args: argparse.Namespace) -> int:
    from pocketnas.retrain.iresnet import build_iresnet
    from pocketnas.tools.flops import count_complexity

    embedding = args.embedding or 512
    try:
        model = build_iresnet(args.arch, embedding, image_size=args.image_size)
    except ValueError as exc:
        raise PocketNasError(str(exc)) from None
    complexity = count_complexity(model, args.image_size)
    result = {
        "arch": args.arch,
        "params": complexity.params,
        "mflops": round(complexity.mflops, 2),
        "flops": complexity.flops,
        "embedding_size": embedding,
        "image_size": args.image_size,
    }
    _print_complexity(result, args.json)
    return 0


def _print_complexity(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(f"params: {result['params']:,}")
        print(f"MFLOPs: {result['mflops']:.2f}")


def _one_line(exc: BaseException) -> str:
    """Return the last meaningful line of an error, without a re-raised worker traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "Traceback" in str(exc):
        last = lines[-1]
        prefix, sep, rest = last.partition(": ")
        return rest if sep and "Error" in prefix else last
    return lines[0]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes, not the stream of its creation."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    # main() may run many times in one process (tests, notebooks): replace the earlier handler.
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(level)
    logger.addHandler(handler)
    # A run folder's log.txt gets INFO records even when the terminal is quiet.
    logger.setLevel(min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args))
    except PocketNasError as exc:
        print(f"pocketnas: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:
        # DataLoader workers re-raise a user-input error as RuntimeError with its traceback.
        if "pocketnas.errors" in str(exc) or "DataError" in str(exc):
            print(f"pocketnas: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt:
        print("pocketnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
