"""The cell genotype: which operation feeds each intermediate node, from which input.

A genotype has a normal and a reduction cell. Each cell lists, for every intermediate node, its
incoming edges as `(operation, input)` pairs: input 0 is the output of the cell two steps back,
input 1 the previous cell's output, and input i >= 2 is intermediate node i - 2 of the same cell.
`*_concat` names the inputs concatenated into the cell output.

The JSON form is the one pocketnas writes; the text form `Genotype(normal=[...], ...)` is the one
that DARTS-family code (pt.darts, PocketNet) prints. The text form is parsed with `ast`, and only
literals, lists, tuples and `range(a, b)` are accepted, so no text is ever executed.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketnas.errors import GenotypeError
from pocketnas.search_space.operations import OPERATIONS

GENOTYPE_FORMAT = "pocketnas-genotype"
GENOTYPE_VERSION = 1

Edge = tuple[str, int]
CellSpec = tuple[tuple[Edge, ...], ...]


@dataclass(frozen=True)
class Genotype:
    """A validated DARTS cell genotype (see the module docstring for the meaning of the fields)."""

    normal: CellSpec
    normal_concat: tuple[int, ...]
    reduce: CellSpec
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell_name in ("normal", "reduce"):
            _validate_cell(
                cell_name, getattr(self, cell_name), getattr(self, f"{cell_name}_concat")
            )

    @property
    def nodes(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form, with format and version fields."""
        return {
            "format": GENOTYPE_FORMAT,
            "version": GENOTYPE_VERSION,
            "normal": [[[op, index] for op, index in node] for node in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[[op, index] for op, index in node] for node in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        """Return the genotype as a JSON document."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_text(self) -> str:
        """Return the genotype in the `Genotype(...)` text form of DARTS-family code."""

        def cell_text(cell: CellSpec) -> str:
            nodes = ", ".join(
                "[" + ", ".join(f"({op!r}, {index})" for op, index in node) + "]" for node in cell
            )
            return f"[{nodes}]"

        def concat_text(concat: tuple[int, ...]) -> str:
            if concat and list(concat) == list(range(concat[0], concat[-1] + 1)):
                return f"range({concat[0]}, {concat[-1] + 1})"
            return str(list(concat))

        return (
            f"Genotype(normal={cell_text(self.normal)}, "
            f"normal_concat={concat_text(self.normal_concat)}, "
            f"reduce={cell_text(self.reduce)}, "
            f"reduce_concat={concat_text(self.reduce_concat)})"
        )

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Build a genotype from its JSON form (the format/version fields are optional).

        Raises:
            GenotypeError: a field is missing, has the wrong type or names an unknown operation.
        """
        if not isinstance(data, dict):
            raise GenotypeError("a genotype must be a JSON object")
        if "format" in data and data["format"] != GENOTYPE_FORMAT:
            raise GenotypeError(f"format is {data['format']!r}, expected {GENOTYPE_FORMAT!r}")
        if "version" in data and data["version"] != GENOTYPE_VERSION:
            raise GenotypeError(
                f"genotype version {data['version']!r} is not supported "
                f"(this pocketnas reads version {GENOTYPE_VERSION})"
            )
        missing = [
            k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data
        ]
        if missing:
            raise GenotypeError(f"missing field(s): {', '.join(missing)}")
        return cls(
            normal=_cell_from_data("normal", data["normal"]),
            normal_concat=_concat_from_data("normal_concat", data["normal_concat"]),
            reduce=_cell_from_data("reduce", data["reduce"]),
            reduce_concat=_concat_from_data("reduce_concat", data["reduce_concat"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse a genotype from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    @classmethod
    def from_text(cls, text: str) -> Genotype:
        """Parse the `Genotype(normal=..., ...)` text form without evaluating it."""
        return cls.from_dict(_parse_genotype_text(text))


def load_genotype(path: str | os.PathLike[str]) -> Genotype:
    """Read a genotype file: JSON, or the `Genotype(...)` text form.

    Raises:
        GenotypeError: the file is missing, unreadable or not a genotype; the message names it.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GenotypeError(f"{target}: genotype file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GenotypeError(f"{target}: cannot read genotype file ({exc})") from None
    try:
        if text.lstrip().startswith("Genotype"):
            return Genotype.from_text(text)
        return Genotype.from_json(text)
    except GenotypeError as exc:
        raise GenotypeError(f"{target}: not a genotype: {exc}") from None


def _validate_cell(name: str, cell: CellSpec, concat: tuple[int, ...]) -> None:
    if not cell:
        raise GenotypeError(f"{name}: a cell needs at least one intermediate node")
    for node_index, node in enumerate(cell):
        if not node:
            raise GenotypeError(f"{name}: node {node_index} has no incoming edge")
        for op, source in node:
            if op not in OPERATIONS:
                valid = ", ".join(sorted(OPERATIONS))
                raise GenotypeError(f"{name}: unknown operation {op!r}; valid: {valid}")
            # Node i (0-based) may read the two cell inputs and nodes 0..i-1, i.e. inputs < i + 2.
            if not 0 <= source < node_index + 2:
                raise GenotypeError(
                    f"{name}: node {node_index} reads input {source}, "
                    f"but only inputs 0..{node_index + 1} exist before it"
                )
    total_inputs = len(cell) + 2
    if not concat:
        raise GenotypeError(f"{name}_concat is empty")
    for index in concat:
        if not 0 <= index < total_inputs:
            raise GenotypeError(
                f"{name}_concat names input {index}, valid are 0..{total_inputs - 1}"
            )


def _cell_from_data(name: str, data: Any) -> CellSpec:
    if not isinstance(data, (list, tuple)):
        raise GenotypeError(f"{name} must be a list of nodes")
    nodes = []
    for node_index, node in enumerate(data):
        if not isinstance(node, (list, tuple)):
            raise GenotypeError(f"{name}: node {node_index} must be a list of [operation, input]")
        edges = []
        for edge in node:
            if (
                not isinstance(edge, (list, tuple))
                or len(edge) != 2
                or not isinstance(edge[0], str)
                or not isinstance(edge[1], int)
                or isinstance(edge[1], bool)
            ):
                raise GenotypeError(
                    f"{name}: node {node_index} has edge {edge!r}; "
                    "expected [operation, input index]"
                )
            edges.append((edge[0], edge[1]))
        nodes.append(tuple(edges))
    return tuple(nodes)


def _concat_from_data(name: str, data: Any) -> tuple[int, ...]:
    if not isinstance(data, (list, tuple, range)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in data
    ):
        raise GenotypeError(f"{name} must be a list of input indices")
    return tuple(data)


_TEXT_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


def _parse_genotype_text(text: str) -> dict[str, Any]:
    """Turn `Genotype(...)` text into plain data by walking its syntax tree."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise GenotypeError(f"not a Genotype(...) expression ({exc.msg})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise GenotypeError("expected text of the form Genotype(normal=..., reduce=...)")
    if call.func.id != "Genotype":
        raise GenotypeError(f"expected Genotype(...), found {call.func.id}(...)")
    values: list[Any] = [_literal(arg) for arg in call.args]
    if len(values) > len(_TEXT_FIELDS):
        raise GenotypeError(f"Genotype takes at most {len(_TEXT_FIELDS)} fields")
    data = dict(zip(_TEXT_FIELDS, values, strict=False))
    for keyword in call.keywords:
        if keyword.arg not in _TEXT_FIELDS:
            raise GenotypeError(f"unexpected field {keyword.arg!r} in Genotype(...)")
        if keyword.arg in data:
            raise GenotypeError(f"field {keyword.arg!r} given twice")
        data[keyword.arg] = _literal(keyword.value)
    return data


def _literal(node: ast.expr) -> Any:
    """Convert an allowed syntax node to a value: str/int constants, lists, tuples, range(a, b)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        if isinstance(node.value, bool):
            raise GenotypeError("booleans are not allowed in a genotype")
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
        and 1 <= len(node.args) <= 2
    ):
        bounds = [_literal(arg) for arg in node.args]
        if not all(isinstance(b, int) for b in bounds):
            raise GenotypeError("range() bounds must be integers")
        return list(range(*bounds))
    raise GenotypeError(f"unsupported expression {ast.unparse(node)!r} in genotype text")
