from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketnas.errors import GenotypeError
from pocketnas.search_space.genotype import Genotype, load_genotype
from pocketnas.search_space.published import POCKETNET_GENOTYPE


def test_published_genotype_matches_reference(published):
    assert Genotype.from_dict(published["genotype"]) == POCKETNET_GENOTYPE


def test_json_round_trip():
    text = POCKETNET_GENOTYPE.to_json()
    data = json.loads(text)
    assert data["format"] == "pocketnas-genotype"
    assert data["version"] == 1
    assert Genotype.from_json(text) == POCKETNET_GENOTYPE


def test_authors_text_parses_to_published(published):
    parsed = Genotype.from_text(published["genotype_string"])
    assert parsed == POCKETNET_GENOTYPE
    assert parsed.normal_concat == (2, 3, 4, 5)


def test_text_round_trip():
    assert Genotype.from_text(POCKETNET_GENOTYPE.to_text()) == POCKETNET_GENOTYPE


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/pwned')",
        "Genotype(normal=__import__('os'), normal_concat=[2], reduce=[], reduce_concat=[2])",
        "Genotype(normal=[[('dw_conv_3x3', 0)]], normal_concat=open('x'), "
        "reduce=[], reduce_concat=[])",
        "Other(normal=[])",
        "Genotype(normal=[[('dw_conv_3x3', 0)]], normal_concat=[2], "
        "reduce=[[('dw_conv_3x3', 0)]], reduce_concat=[2], extra=1)",
        "Genotype(",
        "",
    ],
)
def test_text_rejects_anything_else(text, tmp_path):
    with pytest.raises(GenotypeError):
        Genotype.from_text(text)


def test_text_never_executes_code(tmp_path):
    marker = tmp_path / "created"
    text = (
        "Genotype(normal=[[('dw_conv_3x3', 0), ('dw_conv_1x1', 1)]], "
        f"normal_concat=[open({str(marker)!r}, 'w')], "
        "reduce=[[('dw_conv_3x3', 0), ('dw_conv_1x1', 1)]], reduce_concat=[2])"
    )
    with pytest.raises(GenotypeError):
        Genotype.from_text(text)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["normal"][0].__setitem__(0, ["conv_9x9", 0]), "unknown operation"),
        (lambda d: d["normal"][0].__setitem__(0, ["dw_conv_3x3", 5]), "reads input 5"),
        (lambda d: d.__setitem__("reduce_concat", [9]), "reduce_concat"),
        (lambda d: d.pop("normal"), "missing field"),
        (lambda d: d.__setitem__("version", 99), "version"),
        (lambda d: d["normal"][1].__setitem__(0, "dw_conv_3x3"), "edge"),
    ],
)
def test_invalid_genotypes_rejected(mutate, message):
    data = POCKETNET_GENOTYPE.to_dict()
    mutate(data)
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_dict(data)


def test_load_genotype_names_bad_file(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(GenotypeError, match=str(bad)):
        load_genotype(bad)
    with pytest.raises(GenotypeError, match="not found"):
        load_genotype(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GenotypeError, match=str(binary)):
        load_genotype(binary)


def test_load_genotype_reads_text_form(tmp_path: Path, published):
    path = tmp_path / "genotype.txt"
    path.write_text(published["genotype_string"] + "\n")
    assert load_genotype(path) == POCKETNET_GENOTYPE
