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

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from chalicelib.builds.schemas import AnyArgName, Build, BuildRequest, ShortStr
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
ArgValues = Annotated[list[Annotated[str, StringConstraints(max_length=256)]], Field(min_length=1,
                                                                                     max_length=MAX_CELLS)]
# an include/exclude entry names the version/cuda/python axes or a build-arg axis
Entry = Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")],
                       Annotated[str, StringConstraints(max_length=256)]], Field(min_length=1)]


class Matrix(BaseModel):
    """The ``matrix`` of ``POST /builds``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Values | None = None
    cuda: Values | None = None
    python: Values | None = None
    build_args: dict[AnyArgName, ArgValues] | None = Field(None, description=(
        "build-arg axes (issue 22): NAME -> values, each checked as the request's build_args are; "
        "after version, cuda and python in the product"), max_length=8)
    exclude: list[Entry] = Field(default_factory=list, max_length=MAX_CELLS * 4)
    include: list[Entry] = Field(default_factory=list, max_length=MAX_CELLS)

    @model_validator(mode="after")
    def _something_to_build(self) -> Matrix:
        if not self.axes() and not self.include:
            raise ValueError("a matrix needs at least one of version, cuda, python, build_args (lists) or an "
                             "include list")
        names = set(AXES) | set(self.build_args or {})
        for entry in (*self.exclude, *self.include):
            unknown = sorted(set(entry) - names)
            if unknown:
                raise ValueError(f"an include/exclude entry names {', '.join(unknown)}: not an axis (version, cuda, "
                                 "python, or a build arg of matrix.build_args)")
        return self

    def axes(self) -> dict[str, list[str]]:
        """Every axis in product order: version, cuda, python, then the build args."""
        return {**{a: getattr(self, a) for a in AXES if getattr(self, a) is not None}, **(self.build_args or {})}

    def arg_names(self) -> set[str]:
        return set(self.build_args or {})


class MatrixRequest(BuildRequest):
    """Body of ``POST /builds`` with a matrix: a build request whose version/cuda/python
    come from the cells (the same fields may not also be given outside the matrix)."""

    matrix: Matrix
    skip_invalid: bool = Field(False, description="create the valid cells and list the refused ones")

    @model_validator(mode="after")
    def _axes_not_twice(self) -> MatrixRequest:
        used = set(self.matrix.axes()) | {k for e in self.matrix.include for k in e}
        twice = [a for a in AXES if a in used and getattr(self, a) is not None]
        twice += [f"build_args.{a}" for a in sorted(self.matrix.arg_names() & set(self.build_args))]
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
        key = tuple(sorted(c.items()))
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


def _describe(values: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


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
    arg_names = m.arg_names()
    first_tag: dict[str, dict[str, str]] = {}
    for values in combos:
        axis = {k: v for k, v in values.items() if k not in arg_names}
        args = {k: v for k, v in values.items() if k in arg_names}
        request = base.model_copy(update={**axis, **({"build_args": {**base.build_args, **args}} if args else {})})
        try:
            build = plan(request)
        except BadRequest as e:
            refused.append(Refused(values, e.message, e.field))
            continue
        key = (build.version, build.cuda, build.python, tuple(sorted(build.build_args.items())))
        if key in resolved:  # the same build through the catalog's defaults
            continue
        resolved.add(key)
        tag = build.image.tags[0] if build.image.tags else ""
        if tag and tag in first_tag:  # a build arg that does not make a variant: the same image tags
            refused.append(Refused(values, f"it would push the same tags ({tag}, ...) as "
                                           f"{_describe(first_tag[tag])}: a build arg that does not change what "
                                           "is built makes no image of its own", "matrix"))
            continue
        first_tag[tag] = values
        cells.append(Cell(values, build))
    if refused and (not skip_invalid or not cells):
        what = "every cell was refused" if not cells else f"{len(refused)} of {len(combos)} cells refused"
        hint = "" if not cells else "; send skip_invalid: true to build the others"
        raise MatrixRefused(f"matrix: {what}: " + "; ".join(r.describe() for r in refused) + hint, refused)
    return Expansion(cells, refused)
