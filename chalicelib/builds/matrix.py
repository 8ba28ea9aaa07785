"""Build matrices (issue 22): one request, one build per combination ("cell").

``{"version": [...], "cuda": [...], "python": [...]}`` (any subset of the three axes), with
``exclude`` and ``include`` lists that mean what they mean in a GitHub Actions matrix
(docs.github.com, "Running variations of jobs in a workflow": "Expanding or adding matrix
configurations" and "Excluding matrix configurations", read 2026-12-02 as quoted in
leplatrem's gist 73f7f713c8f28688e5234fc8eb5f3503 and the local-ci crate's matrix.rs):

1. the axes' Cartesian product, in axis order (version, cuda, python), the last varying fastest;
2. ``exclude``: every combination that matches *all* of an entry's key:value pairs goes
   (a partial entry removes every combination it matches); excludes run before includes;
3. ``include``, entry by entry: its pairs are added to every combination where none of them
   would overwrite an *original* (axis) value — values an earlier include added may be
   overwritten; an entry that fits no combination becomes a new combination of its own.
   A matrix with no axes is its include list.

Duplicates are then removed (first kept; also cells that resolve to the same
version/CUDA/Python through the catalog's defaults), and each cell is validated by the very
code a single build goes through (``BuildService.plan``: catalog, GPU table, stage
ceilings), passed in as ``plan``. No I/O here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chalicelib.builds.schemas import Build, BuildRequest, ShortStr
from chalicelib.errors import BadRequest

AXES: tuple[str, ...] = ("version", "cuda", "python")
Axis = Literal["version", "cuda", "python"]

# At most this many cells in one matrix. A group is written all or nothing in one DynamoDB
# TransactWriteItems, which takes at most 100 actions: one Put per cell plus the group, its
# Idempotency-Key and the quota items must fit, with room for a second item per cell. 32 is
# also more than any stage lets one API key run at once (MAX_ACTIVE_BUILDS_PER_KEY: 10 dev,
# 20 prod), so a bigger matrix could never be accepted anyway.
MAX_CELLS = 32

Values = Annotated[list[ShortStr], Field(min_length=1, max_length=MAX_CELLS)]
Entry = Annotated[dict[Axis, ShortStr], Field(min_length=1)]


class Matrix(BaseModel):
    """The ``matrix`` of ``POST /builds``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Values | None = None
    cuda: Values | None = None
    python: Values | None = None
    exclude: list[Entry] = Field(default_factory=list, max_length=MAX_CELLS * 4)
    include: list[Entry] = Field(default_factory=list, max_length=MAX_CELLS)

    @model_validator(mode="after")
    def _something_to_build(self) -> Matrix:
        if not self.axes() and not self.include:
            raise ValueError("a matrix needs at least one of version, cuda, python (a list) or an include list")
        return self

    def axes(self) -> dict[str, list[str]]:
        return {a: getattr(self, a) for a in AXES if getattr(self, a) is not None}


class MatrixRequest(BuildRequest):
    """Body of ``POST /builds`` with a matrix: a build request whose version/cuda/python
    come from the cells (the same fields may not also be given outside the matrix)."""

    matrix: Matrix
    skip_invalid: bool = Field(False, description="create the valid cells and list the refused ones")

    @model_validator(mode="after")
    def _axes_not_twice(self) -> MatrixRequest:
        used = set(self.matrix.axes()) | {k for e in self.matrix.include for k in e}
        twice = [a for a in AXES if a in used and getattr(self, a) is not None]
        if twice:
            raise ValueError(f"{', '.join(twice)}: given both outside and inside the matrix; give each in one place")
        return self

    def base(self) -> BuildRequest:
        return BuildRequest.model_validate(self.model_dump(exclude={"matrix", "skip_invalid"}, exclude_unset=True))


def combinations(m: Matrix) -> list[dict[str, str]]:
    """The matrix's cells, GitHub Actions style (see the module doc), duplicates removed."""
    axes = m.axes()
    combos: list[dict[str, str]] = (
        [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] if axes else [])
    combos = [c for c in combos if not any(all(c.get(k) == v for k, v in e.items()) for e in m.exclude)]
    extra: list[dict[str, str]] = []
    for entry in m.include:
        fitted = False
        for c in combos:
            if all(k not in axes or c[k] == v for k, v in entry.items()):
                c.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    out: list[dict[str, str]] = []
    seen: set[tuple] = set()
    for c in combos + extra:
        key = tuple(c.get(a) for a in AXES)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


@dataclass(frozen=True)
class Cell:
    """A cell that can be built: what the matrix said, and the planned build."""

    values: dict[str, str]
    build: Build


@dataclass(frozen=True)
class Refused:
    values: dict[str, str]
    reason: str
    field: str | None = None

    def describe(self) -> str:
        return f"{{{', '.join(f'{k}: {v}' for k, v in self.values.items())}}}: {self.reason}"


@dataclass(frozen=True)
class Expansion:
    cells: list[Cell]
    skipped: list[Refused]


class MatrixRefused(BadRequest):
    """Cells the catalog or the GPU table refuses (a 400 listing each and why)."""

    def __init__(self, message: str, refused: list[Refused]) -> None:
        super().__init__(message, field="matrix")
        self.refused = refused


def expand(base: BuildRequest, m: Matrix, plan: Callable[[BuildRequest], Build], *,
           skip_invalid: bool = False) -> Expansion:
    """Plan every cell of ``m`` over ``base`` with ``plan`` (``BuildService.plan``).

    A refused cell makes the whole request a 400 listing every refused cell, unless
    ``skip_invalid``: then the rest are returned with what was skipped (still a 400 when no
    cell is left). More than MAX_CELLS cells is a 400 before anything is planned."""
    combos = combinations(m)
    if len(combos) > MAX_CELLS:
        raise BadRequest(f"matrix: {len(combos)} cells; at most {MAX_CELLS} in one request", field="matrix")
    cells: list[Cell] = []
    refused: list[Refused] = []
    resolved: set[tuple[str, str, str]] = set()
    for values in combos:
        try:
            build = plan(base.model_copy(update=values))
        except BadRequest as e:
            refused.append(Refused(values, e.message, e.field))
            continue
        key = (build.version, build.cuda, build.python)
        if key not in resolved:  # the same build through the catalog's defaults
            resolved.add(key)
            cells.append(Cell(values, build))
    if refused and (not skip_invalid or not cells):
        what = "every cell was refused" if not cells else f"{len(refused)} of {len(combos)} cells refused"
        hint = "" if not cells else "; send skip_invalid: true to build the others"
        raise MatrixRefused(f"matrix: {what}: " + "; ".join(r.describe() for r in refused) + hint, refused)
    return Expansion(cells, refused)
