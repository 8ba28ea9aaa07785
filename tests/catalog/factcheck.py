"""Hold a catalog to the vendored facts in ``buildspecs/facts/``.

:func:`problems` renders every combination of every buildspec for every instance type it
may run on and returns one line per fact it names that the facts files do not hold, each
naming the buildspec file, the combination (and instance type) and the missing fact.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import yaml

from chalicelib.specs.catalog import Catalog, without_digest

FACT_FILES = ("cuda-images.yaml", "drivers.yaml", "amis.yaml")


@dataclass(frozen=True)
class Facts:
    images: dict[str, dict]
    cuda_min_driver: dict[str, dict]
    architectures: dict[str, dict]
    ubuntu_packages: dict[str, dict]
    amis: dict[str, dict]  # by SSM parameter

    def architecture(self, cc: str) -> tuple[str, dict] | None:
        for name, arch in self.architectures.items():
            if cc in arch["compute_capabilities"]:
                return name, arch
        return None


def load_facts(root: Path) -> Facts:
    d = root / "buildspecs" / "facts"
    images = yaml.safe_load((d / "cuda-images.yaml").read_text())
    drivers = yaml.safe_load((d / "drivers.yaml").read_text())
    amis = yaml.safe_load((d / "amis.yaml").read_text())
    return Facts(
        images={e["image"]: e for e in images["images"]},
        cuda_min_driver=drivers["cuda_min_driver"],
        architectures=drivers["architectures"],
        ubuntu_packages=drivers["ubuntu_server_packages"],
        amis={a["parameter"]: {"key": k, **a} for k, a in amis["amis"].items()},
    )


def entries(root: Path) -> list[tuple[str, str, dict]]:
    """Every dated fact: (file, where, entry)."""
    d = root / "buildspecs" / "facts"
    out: list[tuple[str, str, dict]] = []
    images = yaml.safe_load((d / "cuda-images.yaml").read_text())
    out += [("cuda-images.yaml", e["image"], e) for e in images["images"]]
    drivers = yaml.safe_load((d / "drivers.yaml").read_text())
    for section in ("cuda_min_driver", "architectures", "ubuntu_server_packages"):
        out += [("drivers.yaml", f"{section}.{k}", e) for k, e in drivers[section].items()]
    amis = yaml.safe_load((d / "amis.yaml").read_text())
    out += [("amis.yaml", f"amis.{k}", e) for k, e in amis["amis"].items()]
    return out


def entry_problems(where: str, entry: dict, today: datetime.date) -> list[str]:
    out = []
    if not entry.get("source"):
        out.append(f"{where}: no source")
    if not isinstance(entry.get("checked"), datetime.date) or entry["checked"] > today:
        out.append(f"{where}: checked must be the date it was read, got {entry.get('checked')!r}")
    if not isinstance(entry.get("confirmed"), bool):
        out.append(f"{where}: confirmed must be true or false")
    elif not entry["confirmed"] and not entry.get("note"):
        out.append(f"{where}: an unconfirmed fact needs a note saying what was not confirmed")
    return out


def _branch(version: str) -> int:
    return int(version.split(".", 1)[0])


def runnable_types(catalog: Catalog, cuda: str) -> list[str]:
    """Every instance type a build on ``cuda`` may run on: any bootable family that runs it
    (a request may name any of them), in table order."""
    hw = catalog.hardware
    return [t for name in hw.families_for(cuda) for t in hw.families[name].sizes]


def host_problems(catalog: Catalog, facts: Facts, instance_type: str, cuda: str) -> list[str]:
    """What the host of ``instance_type`` would get wrong for a build on ``cuda``."""
    hw = catalog.hardware
    fam_name = hw.family_of(instance_type)
    fam = hw.families[fam_name]
    path = hw.ami_of(instance_type)
    if path is None:
        return [f"family {fam_name} has no AMI ({fam.no_ami}) but {instance_type} is offered"]
    out = []
    ami = facts.amis.get(path.parameter)
    arch = facts.architecture(fam.compute_capability)
    if arch is None:
        out.append(f"compute capability {fam.compute_capability} ({fam.gpu}) is in no architecture of drivers.yaml")
    if ami is None:
        out.append(f"AMI parameter {path.parameter} ({fam.ami}) is not in amis.yaml")
    elif path.driver == "preinstalled":
        if fam_name not in ami["families"]:
            out.append(f"AMI {ami['key']} does not list family {fam_name} (it lists {', '.join(ami['families'])})")
        if ami["driver"] == "none" or _branch(ami["driver"]) < int(path.driver_branch):
            out.append(f"AMI {ami['key']} brings driver {ami['driver']}, not branch {path.driver_branch}")
        if arch and ami["driver_kind"] == "open" and not arch[1]["open_modules"]:
            out.append(f"AMI {ami['key']} runs NVIDIA's open kernel modules, which do not support "
                       f"{arch[0]} ({fam.gpu})")
    else:  # install: a plain OS; the host script installs the branch
        if ami["driver"] != "none":
            out.append(f"AMI {ami['key']} already brings driver {ami['driver']}; 'driver: install' expects none")
        if path.driver_branch not in facts.ubuntu_packages:
            out.append(f"driver branch {path.driver_branch} has no ubuntu_server_packages entry in drivers.yaml")
    if arch and arch[1]["last_branch"] and int(path.driver_branch) > int(arch[1]["last_branch"]):
        out.append(f"driver branch {path.driver_branch} is newer than {arch[0]}'s last branch "
                   f"{arch[1]['last_branch']} ({fam.gpu})")
    need = facts.cuda_min_driver.get(cuda)
    if need is None:
        out.append(f"CUDA {cuda} has no minimum driver in drivers.yaml")
    elif int(path.driver_branch) < _branch(need["min_driver"]):
        out.append(f"driver branch {path.driver_branch} is below CUDA {cuda}'s minimum {need['min_driver']}")
    return out


def problems(catalog: Catalog, facts: Facts) -> list[str]:
    out: list[str] = []
    hw = catalog.hardware
    for cuda, release in hw.cuda.items():
        need = facts.cuda_min_driver.get(cuda)
        if need is None or need["min_driver"] != release.min_driver:
            out.append(f"_hardware.yaml: cuda.{cuda}.min_driver {release.min_driver} is not drivers.yaml's "
                       f"{need['min_driver'] if need else 'missing'}")
    for spec in catalog.frameworks.values():
        file = f"buildspecs/{spec.framework}.yaml"
        for r in spec.combinations():
            combo = f"{spec.framework} {r.version} cuda {r.cuda} python {r.python}"
            # BASE_IMAGE, and any other image a build starts from (pytorch's DEVEL_IMAGE), by
            # name:tag (a base pinned by digest, base-digests.yaml, is name:tag@digest)
            for name, base in spec.docker_build_args(r, hw).items():
                if name.endswith("_IMAGE") and base and without_digest(base) not in facts.images:
                    out.append(f"{file}: {combo}: {name} {base} is not in facts/cuda-images.yaml")
            health = hw.cuda[r.cuda].health_image
            if health and health not in facts.images:
                out.append(f"{file}: {combo}: health-check image {health} is not in facts/cuda-images.yaml")
            types = runnable_types(catalog, r.cuda)
            if not types:
                out.append(f"{file}: {combo}: no instance type runs it")
            for t in types:
                out += [f"{file}: {combo} on {t}: {p}" for p in host_problems(catalog, facts, t, r.cuda)]
    return out
