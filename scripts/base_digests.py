"""`make lock`'s first step: the digest each base image's tag points to (issue 19).

    python scripts/base_digests.py            learn the digest of every base the catalog renders
    python scripts/base_digests.py --force    take what the registry serves now even where a
                                              different digest was recorded before

Every ``*_IMAGE`` the catalog's combinations render from their fixed arguments (nvidia/cuda tags
on Docker Hub, and any other base) is looked up in its registry with the registry's v2 API: an
anonymous bearer token from the ``WWW-Authenticate`` challenge, then ``HEAD
/v2/<repository>/manifests/<tag>`` asking for a manifest list or OCI index first; the
``Docker-Content-Digest`` it answers (or the SHA-256 of what GET serves, where HEAD gives none)
is recorded in ``buildspecs/facts/base-digests.yaml`` with the URL that answered and the date.
The catalog then passes ``name:tag@digest`` (chalicelib/specs/catalog.py, BuildSpec.pinned).

What it never does: invent a digest (a registry that cannot be reached records nothing, one
line per image says so, and an entry recorded before stays); replace a recorded digest with a
different one the tag now points to, unless ``--force`` (the pin exists so that a moved tag
does not move the build); keep an entry for a reference the catalog no longer renders (a tag
change). A run that learns nothing new leaves the file as it is, so a second run changes
nothing. Not in the Lambda package: scripts/ is a development tool.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.builds.names import DIGEST  # noqa: E402
from chalicelib.specs.catalog import (  # noqa: E402
    IMAGE_TAG,
    BaseDigest,
    BaseDigests,
    Catalog,
    load_catalog,
    without_digest,
)

FACTS = ROOT / "buildspecs" / "facts" / "base-digests.yaml"
# a multi-architecture tag's digest is its index's: ask for lists and indexes before single manifests
ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
TIMEOUT = 15.0

HEADER = """\
# Base images pinned by digest (issue 19): what each tag the catalog builds FROM pointed to
# when `make lock` (scripts/base_digests.py) asked its registry. The catalog passes such a base
# as name:tag@digest (the tag for readers; the digest is what is pulled); a base with no entry
# here builds by tag. Each build also records the digest it actually used
# (image.base_image_digest).
#
# How to refresh: `make lock` (or `.venv/bin/python scripts/base_digests.py`) from a machine
# that reaches the registries. It adds what it learns, keeps a recorded digest even when the
# tag has moved (`--force` takes the new one), drops entries the catalog no longer renders, and
# writes nothing when nothing changed. Do not edit the digests by hand.
#
# Each entry: digest, source (the manifest URL that answered) and recorded (the date read).
"""


class Unreachable(Exception):
    """The registry gave no digest: no answer, an error status, or an answer that is no digest."""

    def __init__(self, message: str, *, host_down: bool = False):
        super().__init__(message)
        self.host_down = host_down  # nothing answered: the host's other images need not be tried


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] as written in the reference; docker.io for Docker Hub
    repository: str
    tag: str

    @classmethod
    def parse(cls, reference: str) -> ImageRef:
        if not re.fullmatch(IMAGE_TAG, reference):
            raise ValueError(f"{reference!r} is not an image name:tag")
        name, _, tag = reference.rpartition(":")
        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            return cls(first, rest, tag)
        return cls(DOCKER_HUB, name if "/" in name else f"library/{name}", tag)

    @property
    def base_url(self) -> str:
        if self.registry == DOCKER_HUB:
            return f"https://{DOCKER_HUB_API}"
        # as Docker does: a registry on the loopback interface is spoken to in plain HTTP
        host = self.registry.partition(":")[0]
        return f"{'http' if _loopback(host) else 'https'}://{self.registry}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/v2/{self.repository}/manifests/{self.tag}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _challenge(header: str) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``."""
    m = re.match(r"\s*Bearer\s+(.*)$", header or "", re.I | re.S)
    return dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) if m else {}


def _token(session: requests.Session, header: str, ref: ImageRef, timeout: float) -> str:
    """An anonymous pull token from the challenge's realm (the registry's token service)."""
    params = _challenge(header)
    realm = params.pop("realm", "")
    if not re.match(r"^https?://", realm):
        raise Unreachable(f"{ref.manifest_url}: 401 without a Bearer challenge naming a token realm")
    params.setdefault("scope", f"repository:{ref.repository}:pull")
    resp = session.get(realm, params=params, timeout=timeout)
    if resp.status_code != 200:
        raise Unreachable(f"{realm}: HTTP {resp.status_code} for an anonymous token")
    try:
        body = resp.json()
    except ValueError:
        raise Unreachable(f"{realm}: the token answer is not JSON") from None
    token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise Unreachable(f"{realm}: the token answer holds no token")
    return token


def manifest_digest(ref: ImageRef, session: requests.Session | None = None, timeout: float = TIMEOUT) -> str:
    """The digest the registry serves for ``ref``'s tag. Raises Unreachable."""
    session = session or requests.Session()
    url = ref.manifest_url
    headers = {"Accept": ACCEPT}
    try:
        resp = session.head(url, headers=headers, timeout=timeout, allow_redirects=True)
        if resp.status_code == 401:
            headers["Authorization"] = "Bearer " + _token(session, resp.headers.get("WWW-Authenticate", ""), ref,
                                                          timeout)
            resp = session.head(url, headers=headers, timeout=timeout, allow_redirects=True)
        if resp.status_code != 200:
            raise Unreachable(f"{url}: HTTP {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest", "")
        if not digest:  # a registry that gives no digest to HEAD: the hash of what GET serves
            got = session.get(url, headers=headers, timeout=timeout)
            if got.status_code != 200:
                raise Unreachable(f"{url}: HTTP {got.status_code}")
            digest = "sha256:" + hashlib.sha256(got.content).hexdigest()
            said = got.headers.get("Docker-Content-Digest")
            if said and said != digest:
                raise Unreachable(f"{url}: the registry says {said} but what it served hashes to {digest}")
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Unreachable(f"{url}: no answer ({type(e).__name__})", host_down=True) from None
    except requests.RequestException as e:
        raise Unreachable(f"{url}: {type(e).__name__}: {e}") from None
    if not DIGEST.fullmatch(digest):
        raise Unreachable(f"{url}: Docker-Content-Digest {digest!r} is not sha256 and 64 hex digits")
    return digest


# ---- what the catalog builds from, and the facts file --------------------------------------
def references(catalog: Catalog) -> dict[str, list[str]]:
    """Every base the catalog renders from fixed (or version) arguments, by name:tag, with the
    frameworks that use it. A request's own choice of base (the canary's BASE_IMAGE allow-list,
    issue 17) is pinned in its buildspec, not here: see :func:`allow_listed`."""
    out: dict[str, set[str]] = {}
    for spec in catalog.frameworks.values():
        for r in spec.combinations():
            for name, value in spec.docker_build_args(r, catalog.hardware, {}).items():
                if name.endswith("_IMAGE") and value and name not in spec.build_args:
                    out.setdefault(without_digest(value), set()).add(spec.framework)
    return {ref: sorted(users) for ref, users in sorted(out.items())}


def allow_listed(catalog: Catalog) -> list[tuple[str, str, str | None]]:
    """(framework, image, digest recorded in its buildspec or None) of each allow-listed base."""
    return [(spec.framework, img.image, img.digest) for spec in catalog.frameworks.values()
            for arg in spec.build_args.values() for img in arg.images or ()]


def read(path: Path) -> dict[str, BaseDigest]:
    if not path.is_file():
        return {}
    return dict(BaseDigests.model_validate(yaml.safe_load(path.read_text()) or {}).digests)


def render(entries: dict[str, BaseDigest]) -> str:
    lines = [HEADER.rstrip("\n"), "digests:" + ("" if entries else " {}")]
    for ref in sorted(entries):
        e = entries[ref]
        lines += [f'  "{ref}":', f'    digest: "{e.digest}"', f'    source: "{e.source}"',
                  f"    recorded: {e.recorded.isoformat()}"]
    return "\n".join(lines) + "\n"


Lookup = Callable[[ImageRef], str]


def refresh(wanted: Iterable[str], path: Path = FACTS, *, today: date | None = None, force: bool = False,
            lookup: Lookup | None = None, say: Callable[[str], None] = print) -> bool:
    """Learn the digest of each ``wanted`` name:tag into ``path``; True when the file changed.
    One line per image says what became of it."""
    today = today or date.today()
    lookup = lookup or manifest_digest
    wanted = list(wanted)
    old = read(path)
    new: dict[str, BaseDigest] = {}
    down: dict[str, str] = {}  # registry -> why nothing answered
    for reference in wanted:
        ref = ImageRef.parse(reference)
        before = old.get(reference)
        kept = f"kept {before.digest} (recorded {before.recorded})" if before else "no digest recorded: builds by tag"
        if ref.registry in down:
            say(f"{reference}: {down[ref.registry]}; {kept}")
            if before:
                new[reference] = before
            continue
        try:
            digest = lookup(ref)
        except Unreachable as e:
            if e.host_down:
                down[ref.registry] = f"{ref.registry} could not be reached"
            say(f"{reference}: {e}; {kept}")
            if before:
                new[reference] = before
            continue
        if before and before.digest == digest:
            new[reference] = before
            say(f"{reference}: {digest} unchanged")
        elif before and not force:
            new[reference] = before
            say(f"{reference}: the tag now points to {digest}; kept {before.digest} (recorded {before.recorded}); "
                f"--force takes the new one")
        else:
            new[reference] = BaseDigest(digest=digest, source=ref.manifest_url, recorded=today)
            say(f"{reference}: {digest}" + (f" replaces {before.digest} (--force)" if before else " recorded"))
    for gone in sorted(set(old) - set(new)):
        say(f"{gone}: no longer a base the catalog renders: {old[gone].digest} dropped")
    pinned = f"{len(new)} of {len(wanted)} bases pinned by digest"
    if new == old and path.is_file():
        say(f"base digests: {pinned}; {path.name} unchanged")
        return False
    path.write_text(render(new))
    say(f"base digests: {pinned}; {path.name} written")
    return True


def learn(catalog: Catalog, path: Path = FACTS, *, force: bool = False, lookup: Lookup | None = None,
          say: Callable[[str], None] = print) -> bool:
    """`make lock`'s base step: every catalog base into ``path``; the allow-listed bases are
    looked up too, to say what their buildspec could record."""
    wanted = list(references(catalog))
    changed = refresh(wanted, path, force=force, lookup=lookup, say=say)
    for framework, image, digest in allow_listed(catalog):
        if digest:
            say(f"{image}: allowed base of {framework}, pinned to {digest} in buildspecs/{framework}.yaml")
            continue
        try:
            found = (lookup or manifest_digest)(ImageRef.parse(image))
        except Unreachable as e:
            say(f"{image}: allowed base of {framework}, no digest in buildspecs/{framework}.yaml; {e}")
            continue
        say(f"{image}: allowed base of {framework}, no digest in buildspecs/{framework}.yaml; its registry "
            f"serves {found} (record it there, with its source and date, to pin it)")
    return changed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="take the digest a tag points to now, even where "
                        "a different one was recorded")
    opts = parser.parse_args(argv)
    learn(load_catalog(ROOT), FACTS, force=opts.force)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
