"""The width table, the proxy schedule and the settings that a study stores."""

from __future__ import annotations

import dataclasses

import pytest
from tune_helpers import write_tiny_preset

from pocketnas.config import RetrainConfig, load_preset
from pocketnas.errors import ConfigError
from pocketnas.search_space.published import POCKETNET_GENOTYPE
from pocketnas.tune.settings import TuneRequest, TuneSettings, joined_settings, new_settings
from pocketnas.tune.space import DEFAULT_WIDTHS, parse_widths, proxy_config


def test_default_widths_keep_pocketnet_product() -> None:
    assert DEFAULT_WIDTHS[16] == 18  # PocketNetS
    assert DEFAULT_WIDTHS[32] == 9  # PocketNetM
    for channels, layers in DEFAULT_WIDTHS.items():
        assert channels * layers == 16 * 18


def test_parse_widths_reads_pairs() -> None:
    assert parse_widths("8:36, 16:18,32:9") == {8: 36, 16: 18, 32: 9}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("8-36", "CHANNELS:CELLS"),
        ("8:x", "CHANNELS:CELLS"),
        ("", "CHANNELS:CELLS"),
        ("8:36,8:20", "twice"),
        ("8:3", "at least 4 cells"),
        ("0:9", "positive"),
    ],
)
def test_parse_widths_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_widths(text)


def test_proxy_config_scales_schedule() -> None:
    base = load_preset(RetrainConfig, "pocketnet-s128")
    base = dataclasses.replace(base, warmup_epochs=2.6, kd="template", teacher="t.pt")
    proxy = proxy_config(base, 2)
    assert proxy.epochs == 2
    # 8, 14, 20, 25 of 26 epochs scale to 0.6, 1.1, 1.5, 1.9: rounded 1, 1, 2, 2; epoch 2 is
    # the end of the proxy run, so only the drop after epoch 1 stays.
    assert proxy.milestones == [1]
    assert proxy.warmup_epochs == pytest.approx(0.2)
    assert proxy.kd == "none"
    assert proxy.teacher is None
    assert proxy.lr == base.lr
    assert proxy.batch_size == base.batch_size


def test_proxy_config_keeps_inner_milestones() -> None:
    base = load_preset(RetrainConfig, "pocketnet-s128")
    assert proxy_config(base, 13).milestones == [4, 7, 10, 12]
    assert proxy_config(base, 1).milestones == []


def test_proxy_config_caps_steps() -> None:
    base = load_preset(RetrainConfig, "pocketnet-s128")
    assert proxy_config(base, 2).steps_per_epoch is None
    assert proxy_config(base, 2, steps_per_epoch=50).steps_per_epoch == 50
    with pytest.raises(ConfigError, match="proxy epochs"):
        proxy_config(base, 0)


def test_new_settings_defaults() -> None:
    settings = new_settings(TuneRequest(study="s", data="d", out="o", trials=1))
    assert settings.objective == "multi"
    assert settings.cost == "mflops"
    assert settings.pruner == "none"
    assert settings.proxy_epochs == 2
    assert settings.widths == DEFAULT_WIDTHS
    assert settings.embedding_sizes == [128, 256, 512]
    assert settings.genotype == POCKETNET_GENOTYPE.to_text()
    assert settings.base == load_preset(RetrainConfig, "pocketnet-s128")


def test_accuracy_objective_prunes_by_median() -> None:
    request = TuneRequest(study="s", data="d", out="o", trials=1, objective="accuracy")
    assert new_settings(request).pruner == "median"


def test_pruner_with_two_objectives_rejected() -> None:
    request = TuneRequest(study="s", data="d", out="o", trials=1, pruner="median")
    with pytest.raises(ConfigError, match="needs --objective accuracy"):
        new_settings(request)


def test_teacher_preset_rejected() -> None:
    request = TuneRequest(study="s", data="d", out="o", trials=1, preset="iresnet100-128")
    with pytest.raises(ConfigError, match="iresnet100"):
        new_settings(request)


def test_settings_round_trip(tmp_path) -> None:
    preset = write_tiny_preset(tmp_path / "tiny.yaml")
    request = TuneRequest(
        study="s",
        data="d",
        out="o",
        trials=1,
        preset=str(preset),
        widths="4:8,8:4",
        embedding_sizes=[16, 32],
        proxy_steps=3,
        cost="params",
    )
    settings = new_settings(request)
    again = TuneSettings.from_dict(settings.to_dict(), "test")
    assert again == settings
    assert again.widths == {4: 8, 8: 4}
    assert again.base.steps_per_epoch == 4


def test_damaged_settings_rejected() -> None:
    data = new_settings(TuneRequest(study="s", data="d", out="o", trials=1)).to_dict()
    del data["widths"]
    with pytest.raises(ConfigError, match="damaged"):
        TuneSettings.from_dict(data, "study 's'")
    with pytest.raises(ConfigError, match="no pocketnas tune settings"):
        TuneSettings.from_dict({"version": 99}, "study 's'")


def test_joining_worker_takes_stored_settings() -> None:
    stored = new_settings(TuneRequest(study="s", data="d", out="o", trials=1, cost="params"))
    joining = TuneRequest(study="s", data="d", out="o", trials=1, resume=True)
    assert joined_settings(joining, stored, "s") is stored
    same = dataclasses.replace(joining, cost="params", preset="pocketnet-s128")
    assert joined_settings(same, stored, "s") is stored


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"objective": "accuracy"}, "--objective"),
        ({"cost": "mflops"}, "--cost"),
        ({"proxy_epochs": 5}, "--proxy-epochs"),
        ({"widths": "16:18"}, "--widths"),
        ({"embedding_sizes": [128]}, "--embedding-sizes"),
        ({"preset": "pocketnet-m128"}, "--preset .*channels, layers"),
    ],
)
def test_joining_worker_contradiction_rejected(change: dict, fragment: str) -> None:
    stored = new_settings(TuneRequest(study="s", data="d", out="o", trials=1, cost="params"))
    joining = TuneRequest(study="s", data="d", out="o", trials=1, resume=True, **change)
    with pytest.raises(ConfigError, match=fragment):
        joined_settings(joining, stored, "s")
