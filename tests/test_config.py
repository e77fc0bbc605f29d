from __future__ import annotations

import pytest
import yaml

from pocketnas.config import (
    DemoConfig,
    RetrainConfig,
    SearchConfig,
    load_preset,
    override,
    preset_names,
    save_config,
)
from pocketnas.errors import ConfigError


def test_shipped_presets_load():
    names = preset_names()
    for name in ("pocketnet-search", "pocketnet-s128", "pocketnet-m256", "demo"):
        assert name in names
    search = load_preset(SearchConfig, "pocketnet-search")
    assert (search.channels, search.layers, search.stem_multiplier) == (16, 8, 3)
    assert search.order == "second"
    m128 = load_preset(RetrainConfig, "pocketnet-m128")
    assert (m128.channels, m128.layers, m128.embedding_size) == (32, 9, 128)
    assert m128.milestones == [8, 14, 20, 25]
    demo = load_preset(DemoConfig, "demo")
    assert demo.retrain.image_size == demo.synth.image_size


def test_wrong_kind_rejected():
    with pytest.raises(ConfigError, match="'retrain' preset"):
        load_preset(SearchConfig, "pocketnet-s128")


def test_unknown_preset_lists_shipped_ones():
    with pytest.raises(ConfigError, match="pocketnet-s128"):
        load_preset(RetrainConfig, "pocketnet-xl")


def test_unknown_key_and_wrong_type(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: retrain\nchanels: 16\n")
    with pytest.raises(ConfigError, match="chanels"):
        load_preset(RetrainConfig, bad)
    bad.write_text("kind: retrain\nchannels: sixteen\n")
    with pytest.raises(ConfigError, match="channels must be int"):
        load_preset(RetrainConfig, bad)
    bad.write_text("kind: retrain\nchannels: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(RetrainConfig, bad)


def test_yaml_tags_are_not_executed(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("kind: retrain\nchannels: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(RetrainConfig, bad)


def test_override_and_round_trip(tmp_path):
    config = override(load_preset(SearchConfig, "pocketnet-search"), epochs=3, order=None)
    assert config.epochs == 3
    assert config.order == "second"
    path = tmp_path / "config.yaml"
    save_config(path, config)
    data = yaml.safe_load(path.read_text())
    assert data["kind"] == "search"
    assert data["config_version"] == 1
    assert load_preset(SearchConfig, path) == config


def test_validate_rejects_bad_values():
    with pytest.raises(ConfigError, match="order"):
        SearchConfig(order="third").validate()
    with pytest.raises(ConfigError, match="layers"):
        RetrainConfig(layers=3).validate()


def test_pocketnet_presets_carry_published_genotype(published_preset, published):
    from pocketnas.retrain.train import config_genotype
    from pocketnas.search_space.genotype import Genotype

    config = load_preset(RetrainConfig, published_preset)
    assert config_genotype(config) == Genotype.from_dict(published["genotype"])


def test_invalid_preset_genotype_rejected():
    from pocketnas.errors import ConfigError
    from pocketnas.retrain.train import config_genotype

    config = RetrainConfig(genotype="__import__('os').system('true')")
    with pytest.raises(ConfigError, match="genotype of the retraining config is invalid"):
        config_genotype(config)


@pytest.mark.parametrize("size", [128, 256, 512])
def test_teacher_presets_follow_paper(size: int):
    teacher = load_preset(RetrainConfig, f"iresnet100-{size}")
    teacher.validate()
    assert (teacher.arch, teacher.embedding_size, teacher.image_size) == ("iresnet100", size, 112)
    assert (teacher.epochs, teacher.milestones, teacher.lr, teacher.head) == (
        26,
        [8, 14, 20, 25],
        0.1,
        "arcface",
    )
    # A student of the same embedding size can distil from it.
    student = load_preset(RetrainConfig, f"pocketnet-s{size}")
    assert student.embedding_size == teacher.embedding_size
    assert (student.kd_weight, student.weight_decay, student.grad_clip) == (100.0, 5e-4, 5.0)
