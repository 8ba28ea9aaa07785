"""Whether a framework build has GPU code for a GPU: the architecture-coverage rule the PyTorch
and TensorFlow probes share (their ``arch`` step). One copy, in dockerfiles/common/; the host
script packs it into each GPU image's build context beside probe.py, which imports it. Runs on
every Python the images use (3.8 and newer)."""

import re

_ARCH = re.compile(r"^(sm|compute)_([0-9]+)([0-9])([af]?)$")
_DOTTED = re.compile(r"^([0-9]+)\.([0-9])$")


def parse_arch(entry):
    """'sm_86' -> [('sm', (8, 6), '')], 'compute_90a' -> [('compute', (9, 0), 'a')]; '8.0' is both."""
    m = _DOTTED.match(entry)
    if m:
        cc = (int(m.group(1)), int(m.group(2)))
        return [("sm", cc, ""), ("compute", cc, "")]
    m = _ARCH.match(entry)
    if not m:
        return []
    return [(m.group(1), (int(m.group(2)), int(m.group(3))), m.group(4))]


def covering(arch_list, cc):
    """The entry of arch_list with code for a GPU of capability cc (machine code first), or None.
    CUDA Programming Guide: sm_XY runs on X.y, y >= Y (never across majors); sm_XYa only on X.Y;
    compute_XY PTX JIT-compiles for any GPU >= X.Y (compute_XYa: X.Y only)."""
    cc = tuple(cc)
    ptx = None
    for entry in arch_list:
        for kind, have, suffix in parse_arch(entry):
            if kind == "sm":
                if have == cc or (suffix != "a" and have[0] == cc[0] and have[1] <= cc[1]):
                    return entry
            elif ptx is None and (have == cc if suffix == "a" else have <= cc):
                ptx = entry
    return ptx


def check_arch(arch_list, cc, name, build, fix):
    """A line saying which entry of arch_list covers cc; raises naming the missing one."""
    want = f"sm_{cc[0]}{cc[1]}"
    found = covering(arch_list, cc)
    if found is None:
        raise RuntimeError(
            f"{build} has no GPU code for {name} (compute capability {cc[0]}.{cc[1]}): {want} is missing. "
            f"Its architectures are {' '.join(arch_list) or '(none)'}: no sm_{cc[0]}x at or below {want}, "
            f"and no compute_XY PTX at or below compute_{cc[0]}{cc[1]} to JIT-compile. {fix}"
        )
    how = "machine code" if parse_arch(found)[0][0] == "sm" else "PTX the driver JIT-compiles"
    return f"{want} ({name}) is covered by {found} ({how})"
