"""Cell diagrams of a genotype as Graphviz DOT text and, when Graphviz is installed, images.

Each cell is drawn left to right in the layout of the DARTS paper: the two cell inputs c_{k-2}
(output of the cell two steps back) and c_{k-1} (previous cell), the intermediate nodes 0..n-1,
and the cell output c_{k}. Every genotype edge is an arrow labelled with its operation and coloured
by operation family (convolution, pooling, skip connection, none). Unlabelled grey arrows mark the
nodes concatenated into c_{k}.

`genotype_to_dot` needs no Graphviz. `render_genotype` always writes the DOT files and runs
Graphviz's `dot` program for the images only when it is on PATH, so that a machine without
Graphviz still gets files it can render elsewhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketnas.errors import PocketNasError
from pocketnas.fileio import atomic_write_bytes, atomic_write_text
from pocketnas.search_space.genotype import CellSpec, Genotype

logger = logging.getLogger(__name__)

CELL_NAMES = ("normal", "reduction")
"""Cells that `genotype_to_dot` draws, in the order `render_genotype` writes them."""

IMAGE_FORMATS = ("png", "svg", "pdf")
"""Image formats that `render_genotype` can produce with `dot`."""

GRAPHVIZ_MISSING_HINT = (
    "graphviz's dot program is not installed; install it with `apt-get install graphviz` "
    "(Debian/Ubuntu) or `brew install graphviz`, then rerun pocketnas render"
)

# Seconds one `dot` run may take. A cell diagram renders in well under a second.
_DOT_TIMEOUT = 60
# PNG resolution in dpi. At Graphviz's default of 96 dpi the edge labels are hard to read.
_PNG_DPI = 150

_FONT = "Helvetica"
_INPUT_FILL = "#d9ead3"  # light green: the two cell inputs
_NODE_FILL = "#cfe2f3"  # light blue: intermediate nodes
_OUTPUT_FILL = "#fff2cc"  # light yellow: the cell output
_CONCAT_COLOR = "#808080"

# Colour and line style per operation family, from the Okabe-Ito palette, whose colours stay
# distinguishable with the common forms of colour blindness.
_FAMILY_STYLES = {
    "convolution": ("#0072B2", "solid"),  # blue
    "pooling": ("#D55E00", "solid"),  # vermillion
    "skip": ("#009E73", "solid"),  # bluish green
    "none": ("#999999", "dashed"),  # grey
    "other": ("#000000", "solid"),
}


@dataclass(frozen=True)
class RenderResult:
    """Files written by `render_genotype`.

    Attributes:
        dot_files: The DOT files, one per cell, which are always written.
        image_files: The images, one per cell and format, or none when Graphviz is missing.
        graphviz_missing: True when the `dot` program was not found on PATH.
        hint: One line telling how to install Graphviz when it is missing, else None.
    """

    dot_files: tuple[Path, ...]
    image_files: tuple[Path, ...]
    graphviz_missing: bool
    hint: str | None

    @property
    def files(self) -> tuple[Path, ...]:
        """All written files, DOT files first."""
        return self.dot_files + self.image_files


def operation_family(operation: str) -> str:
    """Return the family that decides an operation's colour: convolution, pooling, skip, none.

    Operations registered later fall into the family their name suggests, else into "other".
    """
    if operation == "none":
        return "none"
    if "skip" in operation or operation == "identity":
        return "skip"
    if "pool" in operation:
        return "pooling"
    if "conv" in operation:
        return "convolution"
    return "other"


def genotype_to_dot(genotype: Genotype, cell: str = "normal") -> str:
    """Return the DOT text of one cell of `genotype`.

    Args:
        genotype: The genotype to draw.
        cell: "normal" or "reduction" ("reduce", the genotype's field name, is accepted too).

    Raises:
        PocketNasError: `cell` is not one of those names.
    """
    cell_name = _cell_name(cell)
    if cell_name == "normal":
        nodes, concat = genotype.normal, genotype.normal_concat
    else:
        nodes, concat = genotype.reduce, genotype.reduce_concat
    return _cell_dot(cell_name, nodes, concat)


def render_genotype(
    genotype: Genotype,
    out_dir: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "svg"),
    stem: str | None = None,
) -> RenderResult:
    """Write the DOT file of both cells and, when Graphviz's `dot` is on PATH, their images.

    Files are named `normal.dot`, `reduction.dot`, `normal.png` and so on, or
    `{stem}_normal.dot` and so on when `stem` is given. Each file is written atomically.

    Args:
        genotype: The genotype to draw.
        out_dir: Output folder; it is created if missing, but its parent must exist.
        formats: Image formats, each one of `IMAGE_FORMATS`. Empty writes only the DOT files.
        stem: Optional prefix of the file names, for several genotypes in one folder.

    Returns:
        The written files. Without Graphviz, `graphviz_missing` is True and `hint` is a one-line
        instruction to install it.

    Raises:
        PocketNasError: a format is unknown, `stem` contains a path separator, the parent of
            `out_dir` does not exist, `out_dir` is a file, or `dot` fails or times out.
    """
    image_formats = _check_formats(formats)
    if stem is not None and (not stem or "/" in stem or os.sep in stem):
        raise PocketNasError(f"invalid file name stem {stem!r}: it must be a non-empty file name")
    folder = _prepare_folder(Path(out_dir))
    prefix = f"{stem}_" if stem else ""

    dot_texts = {cell: genotype_to_dot(genotype, cell) for cell in CELL_NAMES}
    dot_files = []
    for cell, text in dot_texts.items():
        path = folder / f"{prefix}{cell}.dot"
        atomic_write_text(path, text)
        dot_files.append(path)
    logger.debug("wrote %s", ", ".join(str(path) for path in dot_files))

    dot_program = shutil.which("dot")
    if dot_program is None:
        logger.debug("graphviz's dot program is not on PATH; wrote the DOT files only")
        return RenderResult(tuple(dot_files), (), graphviz_missing=True, hint=GRAPHVIZ_MISSING_HINT)

    image_files = []
    for cell, text in dot_texts.items():
        for image_format in image_formats:
            path = folder / f"{prefix}{cell}.{image_format}"
            atomic_write_bytes(path, _run_dot(dot_program, text, image_format, path))
            image_files.append(path)
    if image_files:
        logger.debug("wrote %s", ", ".join(str(path) for path in image_files))
    return RenderResult(tuple(dot_files), tuple(image_files), graphviz_missing=False, hint=None)


def _cell_name(cell: str) -> str:
    if cell == "reduce":
        return "reduction"
    if cell not in CELL_NAMES:
        raise PocketNasError(f"unknown cell {cell!r}; valid cells: {', '.join(CELL_NAMES)}")
    return cell


def _input_label(index: int) -> str:
    """Return the node name of cell input `index`, as the genotype numbers them."""
    if index == 0:
        return "c_{k-2}"
    if index == 1:
        return "c_{k-1}"
    return str(index - 2)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _cell_dot(cell_name: str, nodes: CellSpec, concat: Iterable[int]) -> str:
    title = "Normal cell" if cell_name == "normal" else "Reduction cell"
    output = "c_{k}"
    lines = [
        f"digraph {cell_name} {{",
        f'  graph [rankdir=LR, label="{title}", labelloc=t, fontname="{_FONT}", fontsize=22,'
        " nodesep=0.35, ranksep=0.6];",
        f'  node [shape=box, style="rounded,filled", fontname="{_FONT}", fontsize=18,'
        " height=0.5, penwidth=1.2];",
        f'  edge [fontname="{_FONT}", fontsize=14, penwidth=1.6, arrowsize=0.8];',
        "",
        "  // cell inputs, intermediate nodes and the cell output",
        f'  {_quote(_input_label(0))} [fillcolor="{_INPUT_FILL}"];',
        f'  {_quote(_input_label(1))} [fillcolor="{_INPUT_FILL}"];',
    ]
    lines += [
        f'  {_quote(str(i))} [shape=circle, fillcolor="{_NODE_FILL}"];' for i in range(len(nodes))
    ]
    lines += [
        f'  {_quote(output)} [fillcolor="{_OUTPUT_FILL}"];',
        f"  {{ rank=source; {_quote(_input_label(0))}; {_quote(_input_label(1))}; }}",
        f"  {{ rank=sink; {_quote(output)}; }}",
        "",
        "  // one edge per operation of the genotype",
    ]
    for node_index, edges in enumerate(nodes):
        for operation, source in edges:
            color, style = _FAMILY_STYLES[operation_family(operation)]
            lines.append(
                f"  {_quote(_input_label(source))} -> {_quote(str(node_index))} "
                f'[label={_quote(operation)}, color="{color}", fontcolor="{color}", style={style}];'
            )
    lines += ["", "  // nodes concatenated into the cell output"]
    for index in concat:
        lines.append(
            f'  {_quote(_input_label(index))} -> {_quote(output)} [color="{_CONCAT_COLOR}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = (formats,)
    checked: list[str] = []
    for image_format in formats:
        if image_format not in IMAGE_FORMATS:
            raise PocketNasError(
                f"unknown image format {image_format!r}; valid formats: {', '.join(IMAGE_FORMATS)}"
            )
        if image_format not in checked:
            checked.append(image_format)
    return checked


def _prepare_folder(folder: Path) -> Path:
    """Create `folder` if missing; its parent must already exist, so a mistyped path fails."""
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise PocketNasError(f"{folder}: parent folder {parent} does not exist")
    if folder.exists() and not folder.is_dir():
        raise PocketNasError(f"{folder}: exists and is not a folder")
    folder.mkdir(exist_ok=True)
    return folder


def _run_dot(dot_program: str, text: str, image_format: str, target: Path) -> bytes:
    """Render `text` to `image_format` with `dot` and return the image bytes.

    `target` is the file the image is meant for, and only names it in error messages.
    """
    command = [dot_program, f"-T{image_format}"]
    if image_format == "png":
        command.append(f"-Gdpi={_PNG_DPI}")
    try:
        completed = subprocess.run(
            command,
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=_DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PocketNasError(f"{target}: graphviz's dot timed out after {_DOT_TIMEOUT} s") from None
    except OSError as exc:
        raise PocketNasError(
            f"{target}: cannot run graphviz's dot at {dot_program} ({exc})"
        ) from None
    if completed.returncode != 0 or not completed.stdout:
        message = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[0] if message else f"exit status {completed.returncode}"
        raise PocketNasError(f"{target}: graphviz's dot failed ({detail})")
    return completed.stdout
