"""Tests of the cell diagrams: DOT text, images through Graphviz, and the no-Graphviz fallback."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pocketnas.analysis.render import (
    GRAPHVIZ_MISSING_HINT,
    genotype_to_dot,
    operation_family,
    render_genotype,
)
from pocketnas.errors import PocketNasError
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.published import POCKETNET_GENOTYPE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$')
LABEL = re.compile(r'label="([^"]+)"')
INPUT_NAMES = {0: "c_{k-2}", 1: "c_{k-1}"}


def input_name(index: int) -> str:
    return INPUT_NAMES.get(index, str(index - 2))


def parse_edges(dot_text: str) -> tuple[Counter[tuple[str, str, str]], Counter[tuple[str, str]]]:
    """Return the labelled operation edges (source, target, label) and the unlabelled edges."""
    operations: Counter[tuple[str, str, str]] = Counter()
    unlabelled: Counter[tuple[str, str]] = Counter()
    for line in dot_text.splitlines():
        match = EDGE.match(line)
        if match is None:
            continue
        source, target, attributes = match.groups()
        label = LABEL.search(attributes)
        if label is None:
            unlabelled[(source, target)] += 1
        else:
            operations[(source, target, label.group(1))] += 1
    return operations, unlabelled


def require_dot() -> None:
    if shutil.which("dot") is None:
        pytest.fail(
            "graphviz's dot program is not on PATH, so the image test cannot run; "
            "install it with `apt-get install graphviz` (the project setup does this)"
        )


@pytest.mark.parametrize(
    ("cell", "nodes", "concat"),
    [
        ("normal", POCKETNET_GENOTYPE.normal, POCKETNET_GENOTYPE.normal_concat),
        ("reduction", POCKETNET_GENOTYPE.reduce, POCKETNET_GENOTYPE.reduce_concat),
    ],
)
def test_dot_has_every_genotype_edge(
    cell: str, nodes: tuple[tuple[tuple[str, int], ...], ...], concat: tuple[int, ...]
) -> None:
    dot_text = genotype_to_dot(POCKETNET_GENOTYPE, cell)

    operations, unlabelled = parse_edges(dot_text)

    expected_operations = Counter(
        (input_name(source), str(node), operation)
        for node, edges in enumerate(nodes)
        for operation, source in edges
    )
    expected_concat = Counter((input_name(index), "c_{k}") for index in concat)
    assert operations == expected_operations
    assert unlabelled == expected_concat
    assert dot_text.startswith(f"digraph {cell} {{")
    assert "rankdir=LR" in dot_text


def test_dot_declares_all_nodes() -> None:
    dot_text = genotype_to_dot(POCKETNET_GENOTYPE)

    for name in ("c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"):
        assert re.search(rf'^\s*"{re.escape(name)}" \[', dot_text, re.MULTILINE), name


def test_dot_colours_operation_families() -> None:
    dot_text = genotype_to_dot(POCKETNET_GENOTYPE, "reduction")

    colours: dict[str, set[str]] = {}
    for line in dot_text.splitlines():
        label = LABEL.search(line)
        colour = re.search(r' color="([^"]+)"', line)
        if EDGE.match(line) and label and colour:
            colours.setdefault(label.group(1), set()).add(colour.group(1))
    assert all(len(found) == 1 for found in colours.values())
    assert colours["dw_conv_3x3"] == colours["dw_conv_7x7"]
    assert colours["max_pool_3x3"] != colours["dw_conv_3x3"]
    assert colours["skip_connect"] != colours["max_pool_3x3"]


def test_reduce_alias_and_unknown_cell() -> None:
    assert genotype_to_dot(POCKETNET_GENOTYPE, "reduce") == genotype_to_dot(
        POCKETNET_GENOTYPE, "reduction"
    )
    with pytest.raises(PocketNasError, match="unknown cell 'middle'"):
        genotype_to_dot(POCKETNET_GENOTYPE, "middle")


def test_concat_of_cell_input() -> None:
    genotype = Genotype(
        normal=((("none", 0), ("avg_pool_3x3", 1)),),
        normal_concat=(1, 2),
        reduce=((("skip_connect", 0),),),
        reduce_concat=(2,),
    )

    operations, unlabelled = parse_edges(genotype_to_dot(genotype))

    assert operations == Counter({("c_{k-2}", "0", "none"): 1, ("c_{k-1}", "0", "avg_pool_3x3"): 1})
    assert unlabelled == Counter({("c_{k-1}", "c_{k}"): 1, ("0", "c_{k}"): 1})
    assert "style=dashed" in genotype_to_dot(genotype)


def test_operation_family_names() -> None:
    assert operation_family("dw_conv_5x5") == "convolution"
    assert operation_family("max_pool_3x3") == "pooling"
    assert operation_family("skip_connect") == "skip"
    assert operation_family("none") == "none"
    assert operation_family("attention") == "other"


def test_render_writes_images(tmp_path: Path) -> None:
    require_dot()
    out_dir = tmp_path / "cells"

    result = render_genotype(POCKETNET_GENOTYPE, out_dir)

    assert not result.graphviz_missing
    assert result.hint is None
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "normal.dot",
        "normal.png",
        "normal.svg",
        "reduction.dot",
        "reduction.png",
        "reduction.svg",
    ]
    for cell in ("normal", "reduction"):
        png = (out_dir / f"{cell}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE)
        assert len(png) > 1000
        svg = (out_dir / f"{cell}.svg").read_text(encoding="utf-8")
        assert "<svg" in svg
        assert "dw_conv_3x3" in svg
        assert (out_dir / f"{cell}.dot").read_text() == genotype_to_dot(POCKETNET_GENOTYPE, cell)
    assert set(result.files) == set(out_dir.iterdir())


def test_render_with_stem_and_one_format(tmp_path: Path) -> None:
    require_dot()

    result = render_genotype(POCKETNET_GENOTYPE, tmp_path, formats=("svg",), stem="pocketnet")

    assert sorted(path.name for path in result.files) == [
        "pocketnet_normal.dot",
        "pocketnet_normal.svg",
        "pocketnet_reduction.dot",
        "pocketnet_reduction.svg",
    ]


def test_render_without_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    out_dir = tmp_path / "cells"

    result = render_genotype(POCKETNET_GENOTYPE, out_dir)

    assert result.graphviz_missing
    assert result.hint == GRAPHVIZ_MISSING_HINT
    assert "\n" not in result.hint
    assert result.image_files == ()
    assert sorted(path.name for path in out_dir.iterdir()) == ["normal.dot", "reduction.dot"]
    assert all(path.stat().st_size > 0 for path in result.dot_files)


def test_render_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(PocketNasError, match="unknown image format 'jpg'"):
        render_genotype(POCKETNET_GENOTYPE, tmp_path / "cells", formats=("png", "jpg"))
    assert not (tmp_path / "cells").exists()


def test_render_rejects_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(PocketNasError, match=r"parent folder .* does not exist"):
        render_genotype(POCKETNET_GENOTYPE, tmp_path / "missing" / "cells")


def test_render_rejects_file_as_folder(tmp_path: Path) -> None:
    target = tmp_path / "cells"
    target.write_text("not a folder")

    with pytest.raises(PocketNasError, match="is not a folder"):
        render_genotype(POCKETNET_GENOTYPE, target)


def test_render_rejects_stem_with_separator(tmp_path: Path) -> None:
    with pytest.raises(PocketNasError, match="invalid file name stem"):
        render_genotype(POCKETNET_GENOTYPE, tmp_path, stem="a/b")
