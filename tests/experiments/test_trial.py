"""The trial entry point outside NNI, and its reporting when NNI starts it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from nni_helpers import REPOSITORY, TINY_RETRAIN, TINY_SEARCH

from pocketnas.config import RetrainConfig, load_preset
from pocketnas.experiments import trial
from pocketnas.experiments.nni_support import running_under_nni
from pocketnas.retrain.models import config_genotype
from pocketnas.search_space.choices import sample_from_genotype
from pocketnas.search_space.genotype import load_genotype

PUBLISHED = config_genotype(load_preset(RetrainConfig, "pocketnet-s128"))


@pytest.fixture(scope="module")
def genotype_file(tmp_path_factory):
    """PocketNet's published genotype as a JSON file, for the tiny preset that has none."""
    path = tmp_path_factory.mktemp("genotype") / "pocketnet.json"
    path.write_text(PUBLISHED.to_json())
    return path


def _retrain_args(kind: str, face_data, out, *extra: str) -> list[str]:
    return [
        kind,
        "--data",
        str(face_data),
        "--bin",
        str(face_data / "verification.bin"),
        "--preset",
        str(TINY_RETRAIN),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--out",
        str(out),
        *extra,
    ]


class FakeNni:
    """Records the calls that a trial makes to NNI."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.intermediate = []
        self.final = []

    def get_next_parameter(self):
        return self.parameters

    def report_intermediate_result(self, metric):
        self.intermediate.append(metric)

    def report_final_result(self, metric):
        self.final.append(metric)


@pytest.fixture
def no_nni_environment(monkeypatch):
    for name in ("NNI_PLATFORM", "NNI_OUTPUT_DIR", "NNI_EXP_ID", "NNI_TRIAL_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("platform", "expected"), [(None, False), ("", False), ("unittest", False), ("local", True)]
)
def test_nni_detection(monkeypatch, platform, expected):
    if platform is None:
        monkeypatch.delenv("NNI_PLATFORM", raising=False)
    else:
        monkeypatch.setenv("NNI_PLATFORM", platform)
    assert running_under_nni() is expected


def test_nas_trial_outside_nni_never_imports_nni(face_data, tmp_path):
    """A fresh interpreter runs the trial; NNI must not appear in its modules."""
    out = tmp_path / "trial"
    params = json.dumps(sample_from_genotype(PUBLISHED))
    args = _retrain_args("nas", face_data, out, "--params", params)
    script = textwrap.dedent(
        f"""
        import sys
        from pocketnas.experiments.trial import main
        code = main({args!r})
        loaded = sorted(name for name in sys.modules if name == "nni" or name.startswith("nni."))
        print("nni modules:", loaded)
        sys.exit(code)
        """
    )
    environment = {"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "nni modules: []" in done.stdout

    record = json.loads((out / "trial.json").read_text())
    assert record["kind"] == "nas"
    assert record["under_nni"] is False
    assert [row["epoch"] for row in record["intermediate"]] == [1, 2]
    for row in record["intermediate"]:
        assert row["default"] == row["verification_accuracy"]
        assert 0.0 <= row["default"] <= 1.0
    assert record["final"]["default"] == record["intermediate"][-1]["default"]
    assert record["final"]["params"] > 0
    genotype = load_genotype(out / "genotype.json")
    assert [sorted(node) for node in genotype.normal] == [sorted(node) for node in PUBLISHED.normal]
    assert (out / "run" / "metrics.csv").is_file()


@pytest.mark.slow
def test_tune_trial_takes_cells_from_width(face_data, tmp_path, genotype_file, no_nni_environment):
    out = tmp_path / "trial"
    params = json.dumps({"channels": 32, "embedding_size": 32})
    args = _retrain_args("tune", face_data, out, "--params", params, "--epochs", "1")
    args += ["--genotype", str(genotype_file)]
    assert trial.main(args) == 0
    record = json.loads((out / "trial.json").read_text())
    assert record["final"]["channels"] == 32
    assert record["final"]["layers"] == 9
    assert record["final"]["embedding_size"] == 32
    assert len(record["intermediate"]) == 1


def test_search_trial_writes_genotype(face_data, tmp_path, no_nni_environment):
    out = tmp_path / "trial"
    args = ["search", "--data", str(face_data), "--preset", str(TINY_SEARCH), "--out", str(out)]
    args += ["--steps-per-epoch", "2", "--epochs", "2", "--params", '{"seed": 3}']
    assert trial.main(args) == 0
    record = json.loads((out / "trial.json").read_text())
    assert record["parameters"] == {"seed": 3}
    assert [row["epoch"] for row in record["intermediate"]] == [1, 2]
    assert record["final"]["default"] == record["intermediate"][-1]["val_accuracy"]
    written = load_genotype(out / "run" / "genotype.json")
    assert written.to_dict() == record["genotype"]
    assert "seed: 3" in (out / "run" / "config.yaml").read_text()


def test_trial_reports_to_nni(face_data, tmp_path, genotype_file, monkeypatch):
    """Inside NNI the trial takes NNI's parameters and sends every metric to NNI."""
    # An explicit cell count replaces the width table's.
    fake = FakeNni({"channels": 16, "embedding_size": 16, "layers": 4})
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(trial, "import_nni", lambda feature: fake)
    args = _retrain_args("tune", face_data, tmp_path, "--genotype", str(genotype_file))
    args.remove("--out")
    args.remove(str(tmp_path))
    assert trial.main(args) == 0

    assert [metric["epoch"] for metric in fake.intermediate] == [1, 2]
    assert all("default" in metric for metric in fake.intermediate)
    assert len(fake.final) == 1
    assert fake.final[0]["layers"] == 4
    assert fake.final[0]["default"] == fake.intermediate[-1]["default"]
    record = json.loads((tmp_path / "trial.json").read_text())
    assert record["under_nni"] is True
    assert record["final"] == fake.final[0]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_nni_trial_rejects_params_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(trial, "import_nni", lambda feature: FakeNni({}))
    args = ["tune", "--data", str(tmp_path), "--params", "{}"]
    assert trial.main(args) == 2
    assert "--params is for runs outside NNI" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--params", "[1, 2]"], "must be a JSON object"),
        (["--params", "{channels: 8}"], "not valid JSON"),
        (["--params", '{"channels": 12}'], "not in the width table"),
        (["--params", '{"width": 8}'], "unknown key(s) width"),
    ],
)
def test_tune_trial_bad_parameters(face_data, tmp_path, no_nni_environment, capsys, extra, message):
    args = _retrain_args("tune", face_data, tmp_path / "trial", *extra)
    assert trial.main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("pocketnas trial: error:")
    assert message in error


def test_nas_trial_bad_sample(face_data, tmp_path, no_nni_environment, capsys):
    sample = sample_from_genotype(PUBLISHED)
    sample["reduce_node2_inputs"] = "2,2"
    args = _retrain_args("nas", face_data, tmp_path / "trial", "--params", json.dumps(sample))
    assert trial.main(args) == 2
    assert "reduce_node2_inputs: invalid inputs '2,2'" in capsys.readouterr().err


def test_retrain_trial_needs_bin(face_data, tmp_path, no_nni_environment, capsys):
    args = ["retrain", "--data", str(face_data), "--preset", str(TINY_RETRAIN)]
    args += ["--genotype", str(tmp_path / "missing.json"), "--out", str(tmp_path / "trial")]
    assert trial.main(args) == 2
    assert "missing.json" in capsys.readouterr().err


def test_trial_without_out_outside_nni(face_data, no_nni_environment, capsys):
    assert trial.main(["search", "--data", str(face_data)]) == 2
    assert "give the trial folder with --out" in capsys.readouterr().err


@pytest.mark.slow
def test_retrain_trial_with_distillation(face_data, tmp_path, genotype_file, no_nni_environment):
    teacher = tmp_path / "teacher"
    args = _retrain_args("retrain", face_data, teacher, "--genotype", str(genotype_file))
    assert trial.main(args) == 0

    student = tmp_path / "student"
    args = _retrain_args("retrain", face_data, student, "--genotype", str(genotype_file))
    args += ["--kd", "multi-step", "--teacher", str(teacher / "run"), "--params"]
    args += ['{"kd_weight": 10.0}']
    assert trial.main(args) == 0
    record = json.loads((student / "trial.json").read_text())
    assert [row["epoch"] for row in record["intermediate"]] == [1, 2]
    assert all(row["kd_loss"] > 0 for row in record["intermediate"])
    config_text = (student / "run" / "config.yaml").read_text()
    assert "kd: multi-step" in config_text
    assert "kd_weight: 10.0" in config_text
