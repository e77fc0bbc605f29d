"""Retraining runs: exact resume, logs, non-finite losses, teachers and distillation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from retrain_helpers import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pocketnas.cli import main
from pocketnas.errors import PocketNasError
from pocketnas.fileio import load_checkpoint
from pocketnas.retrain import distill, train
from pocketnas.retrain.iresnet import build_iresnet
from pocketnas.retrain.train import run_retrain
from pocketnas.runs import CsvLog
from pocketnas.search_space.published import POCKETNET_GENOTYPE


class _Crash(Exception):
    pass


def assert_same_tensors(left: Any, right: Any, where: str = "") -> None:
    """Assert that two nested checkpoint structures hold bit-identical tensors."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_same_tensors(left[key], right[key], f"{where}/{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same_tensors(a, b, f"{where}/{index}")
    else:
        assert left == right, where


def trained_state(run: Path) -> dict[str, Any]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {key: state[key] for key in ("model", "head", "optimizer", "step")}


def test_resume_after_crash_is_exact(face_data: Path, tmp_path: Path):
    config = tiny_config(checkpoint_every_steps=3, eval_every_steps=2)
    bins = [face_data / "verification.bin"]
    whole = run_retrain(
        config, POCKETNET_GENOTYPE, face_data, tmp_path / "whole", bins, show_progress=False
    )

    def crash(step: int) -> None:
        if step == 7:  # mid-epoch 2; the last checkpoint is step 6
            raise _Crash

    with pytest.raises(_Crash):
        run_retrain(
            config,
            POCKETNET_GENOTYPE,
            face_data,
            tmp_path / "cut",
            bins,
            show_progress=False,
            on_step_end=crash,
        )
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 6
    resumed = run_retrain(
        config,
        POCKETNET_GENOTYPE,
        face_data,
        tmp_path / "cut",
        bins,
        resume=True,
        show_progress=False,
    )
    assert whole.step == resumed.step == 12
    assert_same_tensors(trained_state(whole.run_dir), trained_state(resumed.run_dir))
    # The logs agree too, apart from timings.
    for name in ("metrics.csv", "verification.csv"):
        rows = [CsvLog(run / name).rows for run in (whole.run_dir, resumed.run_dir)]
        for row in rows[0] + rows[1]:
            row.pop("seconds", None)
            row.pop("images_per_second", None)
        assert rows[0] == rows[1], name
    assert [int(r["step"]) for r in CsvLog(resumed.run_dir / "verification.csv").rows] == [
        2,
        4,
        6,
        8,
        10,
        12,
    ]


def test_run_writes_csv_and_tensorboard(face_data: Path, tmp_path: Path):
    config = tiny_config(epochs=2, eval_every_steps=3)
    result = run_retrain(
        config,
        POCKETNET_GENOTYPE,
        face_data,
        tmp_path / "run",
        [face_data / "verification.bin"],
        show_progress=False,
    )
    metrics = CsvLog(result.run_dir / "metrics.csv").rows
    assert [int(row["epoch"]) for row in metrics] == [1, 2]
    assert {"train_loss", "lr", "images_per_second", "verification_accuracy"} <= metrics[0].keys()
    steps = [int(row["step"]) for row in CsvLog(result.run_dir / "verification.csv").rows]
    assert steps == [3, 4, 6, 8]
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "verification/verification"} <= set(tags)
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4, 6, 8]
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]
    assert load_checkpoint(result.run_dir / "checkpoints" / "epoch_001.pt")["step"] == 4


def test_resume_finished_run_returns_metrics(face_data: Path, tmp_path: Path):
    config = tiny_config(epochs=2)
    bins = [face_data / "verification.bin"]
    run = tmp_path / "run"
    first = run_retrain(config, POCKETNET_GENOTYPE, face_data, run, bins, show_progress=False)
    again = run_retrain(
        config, POCKETNET_GENOTYPE, face_data, run, bins, resume=True, show_progress=False
    )
    assert again.step == first.step == 8
    assert set(again.metrics) == set(first.metrics)
    assert again.metrics["epoch"] == 2
    assert again.metrics["verification_accuracy"] == pytest.approx(
        first.metrics["verification_accuracy"], rel=1e-5
    )
    assert again.metrics["train_loss"] == pytest.approx(first.metrics["train_loss"], rel=1e-5)
    assert len(CsvLog(run / "metrics.csv").rows) == 2


def test_nan_loss_keeps_good_checkpoint(
    face_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = tiny_config(checkpoint_every_steps=2, log_every_steps=2)
    model_holder: dict[str, torch.nn.Module] = {}

    def diverge(step: int) -> None:
        if step == 5:
            with torch.no_grad():
                first = next(model_holder["model"].parameters())
                first.fill_(float("nan"))

    original = train.build_network

    def capture(spec: dict[str, Any]) -> torch.nn.Module:
        model_holder["model"] = original(spec)
        return model_holder["model"]

    monkeypatch.setattr(train, "build_network", capture)
    with pytest.raises(PocketNasError, match=r"training loss became nan between steps 5 and 6"):
        run_retrain(
            config,
            POCKETNET_GENOTYPE,
            face_data,
            tmp_path / "run",
            show_progress=False,
            on_step_end=diverge,
        )
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def _teacher_run(face_data: Path, folder: Path) -> Path:
    config = tiny_config(channels=8)
    run_retrain(config, POCKETNET_GENOTYPE, face_data, folder, show_progress=False)
    return folder


def test_multi_step_loads_each_epoch(
    face_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    teacher = _teacher_run(face_data, tmp_path / "teacher")
    loaded: list[str] = []
    original = distill.load_teacher

    def record(file: distill.TeacherFile, device: torch.device) -> torch.nn.Module:
        loaded.append(file.path.name)
        return original(file, device)

    monkeypatch.setattr(distill, "load_teacher", record)
    config = tiny_config(kd="multi-step", teacher=str(teacher))
    result = run_retrain(
        config, POCKETNET_GENOTYPE, face_data, tmp_path / "student", show_progress=False
    )
    assert loaded == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt"]
    rows = CsvLog(result.run_dir / "metrics.csv").rows
    assert all(float(row["kd_loss"]) > 0 for row in rows)


def test_distillation_loss_value():
    student = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    # Normalised: (0.6, 0.8) against (0, 1), and (1, 0) against (1, 0).
    expected = 100 * ((0.6**2 + 0.2**2) + 0.0) / 4
    assert distill.distillation_loss(student, teacher, 100.0).item() == pytest.approx(expected)


def test_missing_teacher_checkpoint_named(
    face_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    teacher = _teacher_run(face_data, tmp_path / "teacher")
    (teacher / "checkpoints" / "epoch_002.pt").unlink()
    capsys.readouterr()
    out = tmp_path / "student"
    args = ["-q", "retrain", "--data", str(face_data), "--out", str(out), "--preset"]
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "kind: retrain\nchannels: 4\nlayers: 4\nembedding_size: 16\nimage_size: 32\nepochs: 3\n"
        "batch_size: 8\nsteps_per_epoch: 4\nworkers: 0\n"
        f'genotype: "{POCKETNET_GENOTYPE.to_text()}"\n'
    )
    code = main([*args, str(preset), "--kd", "multi-step", "--teacher", str(teacher)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    missing = teacher / "checkpoints" / "epoch_002.pt"
    assert err == [
        f"pocketnas: error: {missing}: teacher checkpoint of epoch 2 not found; multi-step "
        "distillation of 3 epochs needs the teacher's checkpoints of epochs 1 to 3"
    ]
    assert not out.exists()


def test_teacher_embedding_size_mismatch(face_data: Path, tmp_path: Path):
    teacher = _teacher_run(face_data, tmp_path / "teacher")
    config = tiny_config(
        embedding_size=32, kd="template", teacher=str(teacher / "checkpoints" / "last.pt")
    )
    with pytest.raises(PocketNasError, match="teacher's embedding size is 16, the student's is 32"):
        run_retrain(config, POCKETNET_GENOTYPE, face_data, tmp_path / "s", show_progress=False)
    assert not (tmp_path / "s").exists()


def test_bare_iresnet_template_teacher(face_data: Path, tmp_path: Path):
    teacher = build_iresnet("iresnet18", embedding_size=16, image_size=32)
    path = tmp_path / "backbone.pth"
    torch.save(teacher.state_dict(), path)
    config = tiny_config(epochs=1, kd="template", teacher=str(path))
    with pytest.raises(PocketNasError, match="name it with --teacher-arch"):
        run_retrain(config, POCKETNET_GENOTYPE, face_data, tmp_path / "a", show_progress=False)
    config = tiny_config(epochs=1, kd="template", teacher=str(path), teacher_arch="iresnet50")
    with pytest.raises(PocketNasError, match="missing keys"):
        run_retrain(config, POCKETNET_GENOTYPE, face_data, tmp_path / "b", show_progress=False)
    config = tiny_config(epochs=1, kd="template", teacher=str(path), teacher_arch="iresnet18")
    result = run_retrain(config, POCKETNET_GENOTYPE, face_data, tmp_path / "c", show_progress=False)
    assert float(result.metrics["kd_loss"]) > 0


def test_iresnet_teacher_trains_and_evaluates(
    face_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = tmp_path / "teacher"
    args = ["-q", "retrain", "--arch", "iresnet18", "--data", str(face_data), "--out", str(run)]
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "kind: retrain\nembedding_size: 16\nimage_size: 32\nepochs: 2\nbatch_size: 8\n"
        "steps_per_epoch: 2\nworkers: 0\n"
    )
    assert main([*args, "--preset", str(preset)]) == 0
    capsys.readouterr()
    for epoch in (1, 2):
        state = load_checkpoint(run / "checkpoints" / f"epoch_{epoch:03d}.pt")
        assert state["network"] == {"arch": "iresnet18", "embedding_size": 16, "image_size": 32}
    bin_path = face_data / "verification.bin"
    assert main(["eval", "--checkpoint", str(run), "--bin", str(bin_path), "--json"]) == 0
    assert '"accuracy"' in capsys.readouterr().out


def test_resume_rejects_other_batch_size(face_data: Path, tmp_path: Path):
    run_retrain(
        tiny_config(epochs=1), POCKETNET_GENOTYPE, face_data, tmp_path / "r", show_progress=False
    )
    shutil.copy(tmp_path / "r" / "checkpoints" / "last.pt", tmp_path / "last.pt")
    with pytest.raises(PocketNasError, match="written with 4 steps per epoch, but this run has 12"):
        run_retrain(
            tiny_config(epochs=2, batch_size=16, steps_per_epoch=None),
            POCKETNET_GENOTYPE,
            face_data,
            tmp_path / "r",
            resume=True,
            show_progress=False,
        )
