"""GPU compatibility: refuse a build that could not run on the GPU it would be tested on.

Applied by ``BuildService.plan`` at ``POST /builds``, before anything is written or
queued. The facts come from ``buildspecs/_hardware.yaml`` (``catalog.Hardware``).

Rules
-----
1. **CUDA release vs GPU.** An image built on CUDA X.Y runs on a GPU whose compute
   capability is at least the release's ``min_compute_capability`` (CUDA 13.0: 7.5, so
   never on p3's V100 at 7.0). A GPU newer than the release's nvcc knows still runs it:
   the driver JIT-compiles the PTX (NVIDIA's "application compatibility").
2. **Instance types the request names** must all pass rule 1, else 400 naming each
   incompatible type, its GPU and compute capability, the release's minimum, and the
   families that would work.
3. **Instance types left to the buildspec's default list**: those failing rule 1 are
   dropped and the build records a warning; none left is a 400 naming what would work.
4. **Source builds** (``BUILD_MODE=source`` with a ``TORCH_CUDA_ARCH_LIST`` build arg):
   a. every entry must be one the release's nvcc compiles:
      ``min_compute_capability <= X.Y <= max_compute_capability``;
   b. the list must cover the GPU of EVERY remaining instance type (the build may be
      smoke-tested on any of them). Which entry covers a GPU of capability M.m follows
      the CUDA Programming Guide's binary and PTX compatibility rules:
        - ``X.Y`` (machine code, sm_XY) covers M.m when X == M and Y <= m: cubins run on
          later minor revisions of the same major architecture, never across majors
          (so 8.0 covers A10G 8.6 and L4 8.9, but not H100 9.0);
        - ``X.Y+PTX`` also embeds compute_XY PTX, which the driver JIT-compiles for any
          GPU with M.m >= X.Y (so 8.6+PTX covers 9.0 too, at a first-load JIT cost).
   Else 400 naming the missing architectures, a list that would work, and the families
   the given list already covers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import BuildSpec, Hardware, cc_str

MODE_ARG = "BUILD_MODE"
SOURCE_MODE = "source"
ARCH_LIST_ARG = "TORCH_CUDA_ARCH_LIST"

_ARCH = re.compile(r"^([0-9]+)\.([0-9])(\+PTX)?$")


@dataclass(frozen=True, order=True)
class Arch:
    """One TORCH_CUDA_ARCH_LIST entry: a compute capability, with or without PTX."""

    cc: tuple[int, int]
    ptx: bool = False

    def __str__(self) -> str:
        return cc_str(self.cc) + ("+PTX" if self.ptx else "")

    def covers(self, gpu: tuple[int, int]) -> bool:
        """True when a binary built for this entry runs on a GPU of capability ``gpu``."""
        same_major_later_minor = self.cc[0] == gpu[0] and self.cc[1] <= gpu[1]
        return same_major_later_minor or (self.ptx and self.cc <= gpu)


def parse_arch_list(value: str) -> list[Arch]:
    """Parse ``'7.5 8.0 8.6+PTX'`` (spaces or semicolons, as PyTorch accepts)."""
    out: list[Arch] = []
    for token in re.split(r"[\s;]+", value.strip()):
        m = _ARCH.match(token)
        if not m:
            raise BadRequest(
                f"build_args.{ARCH_LIST_ARG}: {token!r} is not a compute capability; "
                "write entries like '7.5', '8.0' or '8.6+PTX', space separated",
                field=f"build_args.{ARCH_LIST_ARG}",
            )
        out.append(Arch((int(m.group(1)), int(m.group(2))), bool(m.group(3))))
    return out


def covered(archs: list[Arch], gpu: tuple[int, int]) -> bool:
    return any(a.covers(gpu) for a in archs)


def is_source_build(build_args: dict[str, str]) -> bool:
    return build_args.get(MODE_ARG) == SOURCE_MODE and ARCH_LIST_ARG in build_args


# ---- messages -----------------------------------------------------------------------

def _gpu_of(hw: Hardware, instance_type: str) -> str:
    fam = hw.family(instance_type)
    return f"{instance_type} ({fam.gpu}, compute capability {fam.compute_capability})"


def _what_runs(hw: Hardware, cuda: str) -> str:
    fams = hw.families_for(cuda)
    if not fams:
        return f"no instance family in the hardware table runs CUDA {cuda}"
    examples = ", ".join(hw.families[f].example for f in fams)
    return f"instance families that run CUDA {cuda}: {', '.join(fams)} (for example {examples})"


def _needs(hw: Hardware, cuda: str) -> str:
    return f"CUDA {cuda} needs compute capability {hw.cuda[cuda].min_compute_capability} or newer"


# ---- rules 1-3: instance types --------------------------------------------------------

def check_known(hw: Hardware, instance_types: list[str]) -> None:
    unknown = [t for t in instance_types if not hw.is_known_instance_type(t)]
    if unknown:
        known = ", ".join(sorted({t for f in hw.families.values() for t in f.sizes}))
        raise BadRequest(
            f"instance_types: {', '.join(unknown)} not allowed; GPU instance types voltabuild "
            f"builds on: {known}",
            field="instance_types",
        )
    unbootable = [t for t in instance_types if not hw.bootable(t)]
    if unbootable:
        bootable = [name for name, fam in hw.families.items() if fam.ami]
        raise BadRequest(
            f"instance_types: voltabuild has no AMI that boots "
            f"{'; '.join(f'{t} ({hw.family(t).gpu}): {hw.family(t).no_ami}' for t in unbootable)}; "
            f"instance families it can boot: {', '.join(bootable)}",
            field="instance_types",
        )


@dataclass(frozen=True)
class Placement:
    """Where a build may run: the instance types to try, in order, and what was dropped."""

    instance_types: list[str]
    warnings: list[str]


def place(hw: Hardware, spec: BuildSpec, cuda: str, requested: list[str] | None,
          build_args: dict[str, str]) -> Placement:
    """Choose the instance types for a build of ``spec`` on ``cuda`` (rules 1 to 4).

    ``requested`` is the request's ``instance_types`` (None: the buildspec's defaults);
    ``build_args`` the build args merged over the buildspec's defaults.
    Raises BadRequest (400) with a message that says what would work.
    """
    warnings: list[str] = []
    if requested:
        check_known(hw, requested)
        types = list(dict.fromkeys(requested))
        bad = [t for t in types if not hw.runs(t, cuda)]
        if bad:
            raise BadRequest(
                f"instance_types: {spec.framework} on CUDA {cuda} cannot run on "
                f"{', '.join(_gpu_of(hw, t) for t in bad)}: {_needs(hw, cuda)}; "
                f"{_what_runs(hw, cuda)}",
                field="instance_types",
            )
    else:
        types = [t for t in spec.instance_types if hw.runs(t, cuda)]
        dropped = [t for t in spec.instance_types if t not in types]
        if not types:
            raise BadRequest(
                f"instance_types: none of {spec.framework}'s default instance types can run CUDA "
                f"{cuda} ({'; '.join(_gpu_of(hw, t) for t in dropped)}): {_needs(hw, cuda)}; "
                f"name instance_types from the {_what_runs(hw, cuda)}",
                field="instance_types",
            )
        if dropped:
            warnings.append(
                f"instance_types: dropped {', '.join(_gpu_of(hw, t) for t in dropped)} from the "
                f"default list: {_needs(hw, cuda)}; building on {', '.join(types)}"
            )
    if is_source_build(build_args):
        check_arch_list(hw, cuda, types, build_args[ARCH_LIST_ARG])
    return Placement(instance_types=types, warnings=warnings)


# ---- rule 4: a source build's TORCH_CUDA_ARCH_LIST -------------------------------------

def suggest_arch_list(kept: list[Arch], gpus: list[tuple[int, int]]) -> str:
    """``kept`` plus the exact capability of every GPU it does not cover (native code for
    each, rather than the fewest entries), in order."""
    out = set(kept) | {Arch(gpu) for gpu in gpus if not covered(kept, gpu)}
    return " ".join(str(a) for a in sorted(out))


def check_arch_list(hw: Hardware, cuda: str, instance_types: list[str], value: str) -> None:
    """Rule 4: the list compiles with ``cuda``'s nvcc and covers every instance type's GPU."""
    field = f"build_args.{ARCH_LIST_ARG}"
    release = hw.cuda[cuda]
    archs = parse_arch_list(value)
    gpus = sorted({hw.family(t).cc for t in instance_types})
    lo, hi = release.min_cc, release.max_cc
    if hi is None:
        raise BadRequest(f"{field}: a source build needs a CUDA toolkit; CUDA {cuda!r} has none",
                         field=field)
    outside = [a for a in archs if not lo <= a.cc <= hi]
    if outside:
        kept = [a for a in archs if lo <= a.cc <= hi]
        raise BadRequest(
            f"{field}: CUDA {cuda}'s nvcc compiles compute capability {cc_str(lo)} to {cc_str(hi)}; "
            f"{', '.join(map(str, outside))} {'is' if len(outside) == 1 else 'are'} outside it; "
            f"for {', '.join(instance_types)} send for example "
            f"{ARCH_LIST_ARG}={suggest_arch_list(kept, gpus)!r}",
            field=field,
        )
    missing = [t for t in instance_types if not covered(archs, hw.family(t).cc)]
    if missing:
        missing_cc = sorted({hw.family(t).cc for t in missing})
        fams_covered = [f for f in hw.families_for(cuda) if covered(archs, hw.families[f].cc)]
        alternative = (
            f", or name instance_types from the families it covers: {', '.join(fams_covered)}"
            if fams_covered else ""
        )
        raise BadRequest(
            f"{field}: {value!r} does not include the architecture of every GPU this build may be "
            f"smoke-tested on: missing {', '.join(cc_str(c) for c in missing_cc)} for "
            f"{', '.join(_gpu_of(hw, t) for t in missing)}; send for example "
            f"{ARCH_LIST_ARG}={suggest_arch_list(archs, gpus)!r}{alternative}",
            field=field,
        )
