"""``voltabuild submit`` for build your own (issue 20): the request body of a catalog build,
of a user's context folder (packed and uploaded first unless the API has it) or git
repository, or of a catalog image extended with pip/apt packages and ENV lines."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from voltabuild_cli.context import ContextError, Packed, pack


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def upload(rt, packed: Packed) -> bool:
    """Upload ``packed`` unless the API already has its digest. Returns True when sent."""
    api = rt.api()
    target = api.context_target(packed.sha256, packed.size)
    if target.get("uploaded"):
        click.echo(f"context {packed.digest} ({packed.entries} entries, {_mb(packed.size)}): already uploaded",
                   err=True)
        return False
    tty = rt.is_tty()
    shown = [-1]

    def progress(sent: int, total: int) -> None:
        pct = sent * 100 // max(total, 1)
        if tty and pct != shown[0]:
            shown[0] = pct
            click.echo(f"\ruploading the context: {pct:3d}% ({_mb(sent)} of {_mb(total)})", err=True, nl=False)

    click.echo(f"context {packed.digest} ({packed.entries} entries, {_mb(packed.size)}): uploading", err=True)
    api.upload_context(target["upload"], packed.path, progress)
    if tty:
        click.echo("", err=True)
    click.echo(f"context {packed.digest}: uploaded", err=True)
    return True


def source_body(rt, *, framework: str | None, context_dir: Path | None, git_url: str | None, ref: str | None,
                git_path: str | None, dockerfile: str | None, target: str | None, repository: str | None,
                smoke_test: str | None, pip: tuple[str, ...], apt: tuple[str, ...],
                env: dict[str, str]) -> dict[str, Any]:
    """The start of the ``POST /builds`` body (the shared options are added by the caller)."""
    chosen = [x for x in (framework and "FRAMEWORK", context_dir and "--context", git_url and "--git") if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of FRAMEWORK, --context DIR or --git URL"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    extend = {k: v for k, v in (("pip", list(pip)), ("apt", list(apt)), ("env", env)) if v}
    if extend and not framework:
        raise click.UsageError("--pip, --apt and --env extend a catalog image: give its FRAMEWORK")
    if (ref or git_path) and not git_url:
        raise click.UsageError("--ref and --path go with --git")
    if (dockerfile or target or smoke_test) and framework:
        raise click.UsageError("--file, --target and --smoke-test go with --context or --git")
    body: dict[str, Any] = {}
    if framework:
        body["framework"] = framework
        if extend:
            body["extend"] = extend
    else:
        source: dict[str, Any] = {}
        if context_dir is not None:
            try:
                packed = pack(context_dir, dockerfile or "Dockerfile")
            except ContextError as e:
                raise click.UsageError(str(e)) from None
            try:
                upload(rt, packed)
            finally:
                packed.path.unlink(missing_ok=True)
            source["context"] = packed.digest
        else:
            source["git"] = git_url
            if ref:
                source["ref"] = ref
            if git_path:
                source["path"] = git_path
        if dockerfile:
            source["dockerfile"] = dockerfile
        if target:
            source["target"] = target
        body["source"] = source
        if smoke_test:
            try:
                body["smoke_test"] = shlex.split(smoke_test)
            except ValueError as e:
                raise click.UsageError(f"--smoke-test: {e}") from None
    if repository:
        body["repository"] = repository
    return body
