"""The ``voltabuild`` command: submit GPU image builds and follow them from a terminal."""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import click
import requests

from voltabuild_cli import __version__, render
from voltabuild_cli.api import Api, ApiError, Unreachable
from voltabuild_cli.clock import Clock, human_duration
from voltabuild_cli.config import Config, ConfigError, resolve
from voltabuild_cli.waiting import (
    GaveUp,
    LogsUnavailable,
    LogTail,
    PlainProgress,
    TtyProgress,
    Waiter,
    elapsed_of,
    follow_logs,
    is_final,
)


class Exit(IntEnum):
    OK = 0
    BUILD_FAILED = 1  # the build failed, was cancelled or timed out (or the API failed us)
    USAGE = 2  # bad flags or config, or the API refused the request as given (400/404/409)
    GAVE_UP = 3  # --timeout passed while waiting; the build goes on
    AUTH = 4  # the API key was refused (401/403)
    UNREACHABLE = 5  # no answer from the API
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = """\b
Exit codes:
  0    success (for submit --wait and wait: the build SUCCEEDED)
  1    the build FAILED, was CANCELLED or TIMED_OUT; or the API failed (429, 5xx)
  2    usage error: bad flags or config, or the API refused the request as given
       (400 bad input such as an unknown framework, 404 no such build, 409 conflict)
  3    gave up waiting (--timeout); the build goes on
  4    authentication refused: check VOLTABUILD_API_KEY / --api-key
  5    API unreachable: check VOLTABUILD_API_URL, or start the local stack (make up)
  130  interrupted (Ctrl-C); a build you were waiting for goes on"""

CONFIG_HELP = """\b
Configuration, highest precedence first (URL and key each):
  1. --api-url / --api-key
  2. VOLTABUILD_API_URL / VOLTABUILD_API_KEY in the environment
  3. a TOML file: $VOLTABUILD_CONFIG, else ~/.config/voltabuild/config.toml
     ($XDG_CONFIG_HOME/voltabuild/config.toml), with keys api_url and api_key
  4. only when none of these sets anything: .voltabuild/local.env, written by
     `make up` for the local stack, in this directory or a parent
`voltabuild config` shows what is in use and where it came from."""


class CliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class Runtime:
    """What the commands need from the outside world; tests pass their own (a fake clock)."""

    clock: Clock = field(default_factory=Clock)
    env: Mapping[str, str] | None = None  # None: os.environ at the time of the call
    cwd: Path | None = None
    home: Path | None = None
    stderr_tty: bool | None = None  # None: ask sys.stderr
    session_factory: Callable[[], requests.Session] = requests.Session
    poll_interval_s: float = 5.0
    # set by the group's options
    flags: dict[str, str | None] = field(default_factory=dict)
    debug: bool = False
    _config: Config | None = None
    _api: Api | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = resolve(flags=self.flags, env=self.env if self.env is not None else os.environ,
                                       cwd=self.cwd, home=self.home)
            except ConfigError as e:
                raise CliError(str(e), Exit.USAGE) from None
        return self._config

    def api(self) -> Api:
        if self._api is None:
            cfg = self.config()
            try:
                url = cfg.require_url()
            except ConfigError as e:
                raise CliError(str(e), Exit.USAGE) from None
            if not re.match(r"^https?://[^/\s]+", url):
                raise CliError(f"API URL {url!r} (from {cfg.sources.get('api_url')}) is not an http(s) URL",
                               Exit.USAGE)
            self._api = Api(url, cfg.api_key, clock=self.clock, session=self.session_factory())
        return self._api

    def is_tty(self) -> bool:
        if self.stderr_tty is not None:
            return self.stderr_tty
        return sys.stderr.isatty()


def api_error(e: ApiError, rt: Runtime) -> CliError:
    url = rt.api().url
    if e.no_route:
        return CliError(f"{url} has no route {e.method} {e.path}: is this the voltabuild API? In AWS the URL "
                        "ends with the stage, e.g. https://…/api", Exit.UNREACHABLE)
    if e.auth_refused:
        src = rt.config().sources.get("api_key")
        where = f"the key from {src}" if src else "no API key was given"
        return CliError(f"authentication refused by {url}: {e.message} ({where}; set VOLTABUILD_API_KEY "
                        "or --api-key)", Exit.AUTH)
    if e.status == 429:
        return CliError(f"the API is busy: {e.message} (HTTP 429); try again later", Exit.BUILD_FAILED)
    if 400 <= e.status < 500:
        return CliError(e.message, Exit.USAGE)
    return CliError(f"the API failed: {e.message} (HTTP {e.status})", Exit.BUILD_FAILED)


def unreachable(e: Unreachable) -> CliError:
    return CliError(
        f"{e}.\nIs it running? For the local stack run `make up` in the voltabuild checkout; for a "
        "deployment set VOLTABUILD_API_URL (or --api-url) to its URL.",
        Exit.UNREACHABLE,
    )


class VoltabuildGroup(click.Group):
    """Turns API and config failures into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ApiError, Unreachable, CliError, KeyboardInterrupt) as e:
            rt = ctx.find_object(Runtime) or Runtime()
            if rt.debug:
                traceback.print_exc(file=sys.stderr)
            if isinstance(e, KeyboardInterrupt):
                err = CliError("interrupted", Exit.INTERRUPTED)
            elif isinstance(e, ApiError):
                err = api_error(e, rt)
            elif isinstance(e, Unreachable):
                err = unreachable(e)
            else:
                err = e
            click.echo(f"voltabuild: {err.message}", err=True)
            ctx.exit(int(err.exit_code))


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts).")(fn)


def _rt(ctx: click.Context) -> Runtime:
    return ctx.ensure_object(Runtime)


def _duration(value: str | None) -> float | None:
    """``90s``, ``15m``, ``2h``; a bare number is minutes."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value)
    if not m:
        raise click.BadParameter(f"{value!r} is not a duration; use e.g. 90s, 15m or 2h (a bare number is minutes)")
    n = float(m.group(1))
    return n * {"s": 1, "m": 60, "h": 3600, "": 60}[m.group(2)]


def _build_args(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, val = v.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE, e.g. --build-arg CANARY_FAIL=1")
        out[name] = val
    return out


# ---- the group ------------------------------------------------------------------
@click.group(
    cls=VoltabuildGroup,
    epilog="\b\nExamples:\n"
    "  voltabuild frameworks                      # what can be built\n"
    "  voltabuild submit pytorch --version 2.5.1 --cuda 12.4 --wait\n"
    "  voltabuild list --status RUNNING\n"
    "  voltabuild logs b-0123456789abcdef0123 --follow\n"
    "  id=$(voltabuild submit canary --json | jq -r .id) && voltabuild wait \"$id\" --timeout 30m\n\n"
    + CONFIG_HELP + "\n\n" + EXIT_CODES_HELP,
)
@click.option("--api-url", metavar="URL", help="The voltabuild API, e.g. https://abc.execute-api.us-east-1.amazonaws.com/api.")
@click.option("--api-key", metavar="KEY", help="API key, sent in the x-api-key header.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.version_option(__version__, prog_name="voltabuild")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None, debug: bool) -> None:
    """Build GPU deep-learning Docker images on spot instances, from your terminal.

    voltabuild asks the voltabuild API to build an image (say PyTorch 2.5.1 on CUDA 12.4):
    a spot GPU instance builds it, smoke-tests it on the GPU, pushes it to ECR and
    terminates. Data goes to stdout, progress and errors to stderr; every command takes
    --json for scripts.
    """
    rt = _rt(ctx)
    rt.flags = {"api_url": api_url, "api_key": api_key}
    rt.debug = debug


# ---- submit ---------------------------------------------------------------------
@cli.command(
    epilog="\b\nExamples:\n"
    "  voltabuild submit pytorch                        # the defaults: see `voltabuild frameworks`\n"
    "  voltabuild submit pytorch --version 2.5.1 --cuda 12.4 --python 3.11 --wait\n"
    "  voltabuild submit tensorflow --instance-type g5.xlarge --instance-type g4dn.xlarge \\\n"
    "      --max-price 0.8 --tag team-a --timeout 120\n"
    "  voltabuild submit canary --build-arg CANARY_FAIL=1 --no-notify --json\n"
    "  voltabuild submit pytorch --build-arg BUILD_MODE=source --split on   # compile on a CPU box, test on a GPU\n"
    "  voltabuild submit --context . --file docker/Dockerfile --target runtime --repository team/app --tag v1\n"
    "  voltabuild submit --git https://github.com/org/repo.git --ref v1.2 --path services/api\n"
    "  voltabuild submit pytorch --version 2.5.1 --pip transformers==4.46.0 --apt ffmpeg --env HF_HOME=/data/hf\n\n"
    "\b\nExit codes: 0 submitted (with --wait: succeeded), 1 the build failed, was cancelled or\n"
    "timed out, 2 refused as given (the API's message says which field and what is allowed),\n"
    "3 gave up waiting, 4 auth refused, 5 API unreachable.",
)
@click.argument("framework", required=False)
@click.option("--context", "context_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Build DIR with its own Dockerfile (uploaded, honouring .dockerignore; skipped when known).")
@click.option("--git", "git_url", metavar="URL", help="Build an https git repository's Dockerfile.")
@click.option("--ref", metavar="REF", help="With --git: branch, tag or commit (default: the default branch).")
@click.option("--path", "git_path", metavar="DIR", help="With --git: the context's folder in the repository.")
@click.option("--file", "dockerfile", metavar="PATH", help="The Dockerfile, relative to the context (default Dockerfile).")
@click.option("--target", metavar="STAGE", help="The Dockerfile stage to build.")
@click.option("--repository", metavar="NAME", help="Image repository inside voltabuild/ (default voltabuild/custom).")
@click.option("--smoke-test", metavar="CMD", help="With --context/--git: command run in the image on the GPU "
              "(split like a shell would, never run by one; default nvidia-smi).")
@click.option("--pip", "pip_", multiple=True, metavar="REQ", help="With FRAMEWORK: a pip requirement on top; repeat.")
@click.option("--apt", "apt", multiple=True, metavar="PKG", help="With FRAMEWORK: a Debian package on top; repeat.")
@click.option("--env", "env", multiple=True, metavar="K=V", callback=_build_args,
              help="With FRAMEWORK: an ENV line on top; repeat.")
@click.option("--version", "version_", metavar="V", help="Framework version (default: the buildspec's).")
@click.option("--cuda", metavar="C", help="CUDA release, e.g. 12.4 (default: the version's).")
@click.option("--python", metavar="P", help="Python version, e.g. 3.11 (default: the version's).")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Extra image tag; repeat for more.")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", callback=_build_args,
              help="Build argument the buildspec allows; repeat for more.")
@click.option("--instance-type", "instance_types", multiple=True, metavar="T",
              help="Instance type to try, in order; repeat for more (default: the buildspec's list).")
@click.option("--max-price", type=click.FloatRange(min=0, min_open=True), metavar="USD",
              help="Spot price cap, USD per hour.")
@click.option("--split", type=click.Choice(["on", "off", "auto"]),
              help="on: build on a CPU spot instance, then smoke-test on the GPU one (cheaper for long "
                   "compiles); off: all on the GPU instance; auto: split source builds only "
                   "(default: the buildspec's).")
@click.option("--timeout", "timeout_min", type=click.IntRange(min=1), metavar="MIN",
              help="Build timeout in minutes (default: the buildspec's).")
@click.option("--no-notify", is_flag=True, help="No Slack message when the build ends.")
@click.option("--channel", metavar="NAME", help="Slack channel (a name the deployment configured).")
@click.option("--idempotency-key", metavar="KEY",
              help="Reuse a key to make re-running this command safe (default: a new UUID per run; "
                   "the CLI's own retries always reuse it).")
@click.option("--matrix", "matrix", multiple=True, metavar="KEY=V1,V2",
              help="Build every combination: KEY is version, cuda or python; repeat for more axes. "
                   "Makes a group (voltabuild group ID).")
@click.option("--skip-invalid", is_flag=True, help="With --matrix: build the valid cells, list the refused ones.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the build until it ends (exit code as for `wait`).")
@click.option("--wait-timeout", metavar="DURATION", help="With --wait: give up after e.g. 90m (exit 3).")
@json_option
@click.pass_context
def submit(ctx: click.Context, framework: str | None, context_dir: Path | None, git_url: str | None,
           ref: str | None, git_path: str | None, dockerfile: str | None, target: str | None,
           repository: str | None, smoke_test: str | None, pip_: tuple[str, ...], apt: tuple[str, ...],
           env: dict[str, str], version_: str | None, cuda: str | None, python: str | None,
           tags: tuple[str, ...], build_args: dict[str, str], instance_types: tuple[str, ...],
           max_price: float | None, split: str | None, timeout_min: int | None, no_notify: bool, channel: str | None,
           idempotency_key: str | None, matrix: tuple[str, ...], skip_invalid: bool, wait_: bool,
           wait_timeout: str | None, as_json: bool) -> None:
    """Submit a build of FRAMEWORK (see `voltabuild frameworks`), of your own Dockerfile
    (--context DIR or --git URL), or of FRAMEWORK with packages on top (--pip, --apt, --env).

    Omitted options take the buildspec's defaults. The request carries an
    Idempotency-Key, so the CLI's retries after a lost connection never make two builds.
    """
    giveup = _duration(wait_timeout)
    if giveup is not None and not wait_:
        raise click.UsageError("--wait-timeout needs --wait")
    if no_notify and channel:
        raise click.UsageError("--no-notify and --channel contradict each other")
    rt = _rt(ctx)
    from voltabuild_cli.submit_source import source_body

    body: dict[str, Any] = source_body(
        rt, framework=framework, context_dir=context_dir, git_url=git_url, ref=ref, git_path=git_path,
        dockerfile=dockerfile, target=target, repository=repository, smoke_test=smoke_test, pip=pip_, apt=apt,
        env=env)
    for k, v in (("version", version_), ("cuda", cuda), ("python", python), ("max_price", max_price),
                 ("timeout_minutes", timeout_min)):
        if v is not None:
            body[k] = v
    if tags:
        body["tags"] = list(tags)
    if build_args:
        body["build_args"] = build_args
    if instance_types:
        body["instance_types"] = list(instance_types)
    if split is not None:
        body["split"] = {"on": True, "off": False}.get(split, split)
    if no_notify:
        body["notify"] = False
    elif channel:
        body["notify"] = {"slack": True, "channel": channel}

    if matrix or skip_invalid:
        _submit_matrix(ctx, body, matrix, skip_invalid, idempotency_key, wait_, giveup, as_json)
    build, created = rt.api().submit(body, idempotency_key=idempotency_key)
    for w in build.get("warnings") or []:
        click.echo(f"warning: {w}", err=True)
    if not created:
        click.echo(f"this Idempotency-Key already made build {build['id']}; showing it", err=True)
    if wait_:
        click.echo(f"submitted {build['id']}: {render.combo(build)}", err=True)
        _wait_and_exit(ctx, build["id"], build, giveup, as_json)
    if as_json:
        click.echo(render.to_json(build))
    else:
        click.echo(f"{build['id']}  {build['status']}  {render.combo(build)}")
        for ref in render.image_refs(build):
            click.echo(f"  {ref}")
        click.echo(f"follow it: voltabuild wait {build['id']}   (or: voltabuild logs {build['id']} --follow)",
                   err=True)


def _submit_matrix(ctx: click.Context, body: dict, matrix: tuple[str, ...], skip_invalid: bool,
                   idempotency_key: str | None, wait_: bool, giveup: float | None, as_json: bool) -> None:
    from voltabuild_cli import groups

    if not matrix:
        raise click.UsageError("--skip-invalid needs --matrix")
    try:
        body["matrix"] = groups.parse_matrix(matrix)
    except groups.MatrixError as e:
        raise click.UsageError(str(e)) from None
    if skip_invalid:
        body["skip_invalid"] = True
    rt = _rt(ctx)
    group, created = rt.api().submit(body, idempotency_key=idempotency_key)
    if not created:
        click.echo(f"this Idempotency-Key already made group {group['id']}; showing it", err=True)
    for s in group.get("skipped") or []:
        click.echo(f"skipped {s.get('values')}: {s.get('reason')}", err=True)
    if wait_:
        click.echo(f"submitted group {group['id']}: {len(group['cells'])} cells", err=True)
        _wait_group_and_exit(ctx, group["id"], giveup, as_json)
    click.echo(render.to_json(group) if as_json else groups.group_text(group))
    if not as_json:
        click.echo(f"follow it: voltabuild group {group['id']} --wait", err=True)
    ctx.exit(Exit.OK)


def _wait_group_and_exit(ctx: click.Context, group_id: str, giveup: float | None, as_json: bool) -> None:
    from voltabuild_cli import groups

    rt = _rt(ctx)
    try:
        progress = groups.GroupTtyProgress(sys.stderr) if rt.is_tty() else groups.GroupPlainProgress(sys.stderr)
        final = groups.wait_group(rt.api(), group_id, rt.clock, progress, interval_s=rt.poll_interval_s,
                                  timeout_s=giveup)
    except groups.GroupGaveUp as e:
        if as_json:
            click.echo(render.to_json(e.group))
        raise CliError(f"{e}; it goes on (voltabuild group {group_id})", Exit.GAVE_UP) from None
    except KeyboardInterrupt:
        raise CliError(f"interrupted; group {group_id} goes on (voltabuild group {group_id} --cancel stops it)",
                       Exit.INTERRUPTED) from None
    click.echo(render.to_json(final) if as_json else groups.group_text(final))
    ctx.exit(Exit.OK if final["status"] == "SUCCEEDED" else Exit.BUILD_FAILED)


@cli.command(epilog="\b\nExamples:\n  voltabuild group g-0123456789abcdef0123\n"
             "  voltabuild group g-0123456789abcdef0123 --wait --timeout 2h\n"
             "  voltabuild group g-0123456789abcdef0123 --cancel\n\n"
             "\b\nExit codes: 0 shown (with --wait: every cell SUCCEEDED), 1 with --wait: a cell did not\n"
             "succeed, 2 no such group, 3 gave up waiting.")
@click.argument("group_id", metavar="ID")
@click.option("--wait", "wait_", is_flag=True, help="Wait until every cell has ended.")
@click.option("--timeout", metavar="DURATION", help="With --wait: give up after e.g. 90m (exit 3).")
@click.option("--cancel", "cancel_", is_flag=True, help="Cancel every cell not yet finished.")
@json_option
@click.pass_context
def group(ctx: click.Context, group_id: str, wait_: bool, timeout: str | None, cancel_: bool, as_json: bool) -> None:
    """Show a matrix's group: each cell's status, phase, cost and image, and the group's status
    (RUNNING until every cell ended; SUCCEEDED only if every cell did)."""
    from voltabuild_cli import groups

    api = _rt(ctx).api()
    if cancel_:
        api.cancel_group(group_id)
    if wait_:
        _wait_group_and_exit(ctx, group_id, _duration(timeout), as_json)
    g = api.get_group(group_id)
    click.echo(render.to_json(g) if as_json else groups.group_text(g))


@cli.command(epilog="\b\nExamples:\n  voltabuild costs                      # this month so far, by framework\n"
             "  voltabuild costs --by day --from 2026-11-01 --to 2026-11-30\n"
             "  voltabuild costs --by group --json")
@click.option("--from", "start", metavar="YYYY-MM-DD", help="First day (UTC; default: the 1st of this month).")
@click.option("--to", "end", metavar="YYYY-MM-DD", help="Last day (UTC, inclusive; default: today).")
@click.option("--by", type=click.Choice(["framework", "day", "key", "group"]), default="framework",
              show_default=True, help="One row per framework, day, API key or group.")
@json_option
@click.pass_context
def costs(ctx: click.Context, start: str | None, end: str | None, by: str, as_json: bool) -> None:
    """What finished builds cost (booked when their instance was terminated)."""
    from voltabuild_cli import groups

    report = _rt(ctx).api().costs(start=start, end=end, by=by)
    click.echo(render.to_json(report) if as_json else groups.costs_text(report))


# ---- status / list / cancel -----------------------------------------------------
@cli.command(epilog="\b\nExamples:\n  voltabuild status b-0123456789abcdef0123\n"
             "  voltabuild status b-0123456789abcdef0123 --json | jq -r .status\n\n"
             "Exits 0 whenever the build was shown, whatever its status; `wait` exits by the outcome.")
@click.argument("build_id", metavar="ID")
@json_option
@click.pass_context
def status(ctx: click.Context, build_id: str, as_json: bool) -> None:
    """Show a build: status, phase, image, instance, timeline."""
    rt = _rt(ctx)
    build = rt.api().get_build(build_id)
    click.echo(render.to_json(build) if as_json else render.build_detail(build, rt.clock.now()))


STATUSES = ["QUEUED", "LAUNCHING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]


@cli.command("list", epilog="\b\nExamples:\n  voltabuild list\n  voltabuild list --status RUNNING\n"
             "  voltabuild list --framework pytorch --limit 100 --json | jq -r '.builds[].id'")
@click.option("--status", "status_", type=click.Choice(STATUSES, case_sensitive=False), help="Only this status.")
@click.option("--framework", metavar="F", help="Only this framework.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most N builds.")
@json_option
@click.pass_context
def list_(ctx: click.Context, status_: str | None, framework: str | None, limit: int, as_json: bool) -> None:
    """List builds, newest first.

    With --json: {"builds": [...], "next": cursor-or-null}; a non-null next means there are more.
    """
    api = _rt(ctx).api()
    builds: list[dict] = []
    cursor = None
    while len(builds) < limit:
        page = api.list_builds(status=status_.upper() if status_ else None, framework=framework,
                               limit=min(100, limit - len(builds)), cursor=cursor)
        builds.extend(page.get("builds") or [])
        cursor = page.get("next")
        if not cursor:
            break
    if as_json:
        click.echo(render.to_json({"builds": builds, "next": cursor}))
        return
    if not builds:
        click.echo("no builds", err=True)
        return
    click.echo(render.build_table(builds))
    if cursor:
        click.echo(f"(more builds: raise --limit above {limit})", err=True)


@cli.command(epilog="\b\nExamples:\n  voltabuild cancel b-0123456789abcdef0123\n\n"
             "A QUEUED build is CANCELLED at once. A LAUNCHING or RUNNING build has its instance\n"
             "terminated first; `voltabuild wait ID` shows when it is CANCELLED. A build that already\n"
             "finished cannot be cancelled (exit 2).")
@click.argument("build_id", metavar="ID")
@json_option
@click.pass_context
def cancel(ctx: click.Context, build_id: str, as_json: bool) -> None:
    """Cancel a build."""
    build, done = _rt(ctx).api().cancel(build_id)
    if as_json:
        click.echo(render.to_json(build))
    elif done:
        click.echo(f"{build['id']}  CANCELLED")
    else:
        click.echo(f"{build['id']}  cancel requested; it is {build['status']} and becomes CANCELLED once "
                   f"its instance is terminated (voltabuild wait {build['id']})")


# ---- logs -----------------------------------------------------------------------
@cli.command(epilog="\b\nExamples:\n  voltabuild logs b-0123456789abcdef0123\n"
             "  voltabuild logs b-0123456789abcdef0123 --follow\n"
             "  voltabuild logs b-0123456789abcdef0123 --json | jq -r .message   # one JSON object per line")
@click.argument("build_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the build ends.")
@json_option
@click.pass_context
def logs(ctx: click.Context, build_id: str, follow: bool, as_json: bool) -> None:
    """Print a build's log (the instance's output).

    With --json, one {"at": ..., "message": ...} object per line.
    """
    rt = _rt(ctx)
    api = rt.api()
    build = api.get_build(build_id)  # an unknown id is a clear 404 before anything else

    def show(line: dict) -> None:
        if as_json:
            click.echo(render.to_json(line).replace("\n", "").replace("  ", ""))
        else:
            at = render.hms(line.get("at"))
            click.echo(f"{at}  {line.get('message', '')}".rstrip())

    try:
        if follow:
            for line in follow_logs(api, build_id, rt.clock, interval_s=min(3.0, rt.poll_interval_s)):
                show(line)
        else:
            lines = LogTail(api, build_id).read()
            for line in lines:
                show(line)
            if not lines and is_final(build):
                click.echo(f"{build_id} is {build['status']} and has no log: its instance shipped no lines "
                           "(it never started its build, or could not reach CloudWatch Logs); "
                           f"`voltabuild status {build_id}` shows its timeline and reason", err=True)
            elif not lines:
                click.echo(f"no log lines for {build_id} yet (it is {build['status']}); "
                           f"`voltabuild logs --follow {build_id}` waits for them", err=True)
    except LogsUnavailable as e:
        raise CliError(f"{e}; use `voltabuild status {build_id}` for its timeline", Exit.BUILD_FAILED) from None


# ---- wait -----------------------------------------------------------------------
def _wait_and_exit(ctx: click.Context, build_id: str, build: dict | None, timeout_s: float | None,
                   as_json: bool) -> None:
    rt = _rt(ctx)
    api = rt.api()
    progress = TtyProgress(sys.stderr) if rt.is_tty() else PlainProgress(sys.stderr)
    waiter = Waiter(api, rt.clock, progress, interval_s=rt.poll_interval_s, timeout_s=timeout_s)
    try:
        final = waiter.wait(build_id, build)
    except GaveUp as e:
        if as_json:
            click.echo(render.to_json(e.build))
        raise CliError(f"{e}; it goes on (voltabuild wait {build_id}, or voltabuild cancel {build_id})",
                       Exit.GAVE_UP) from None
    except KeyboardInterrupt:
        raise CliError(f"interrupted; build {build_id} goes on (voltabuild cancel {build_id} stops it)",
                       Exit.INTERRUPTED) from None
    if as_json:
        click.echo(render.to_json(final))
    else:
        took = human_duration(elapsed_of(final, rt.clock))
        click.echo(f"{final['id']}  {final['status']}  after {took}  {render.combo(final)}")
        if final["status"] == "SUCCEEDED":
            for ref in render.image_refs(final):
                click.echo(f"  {ref}")
        elif final.get("reason"):
            click.echo(f"  reason: {final['reason']}")
    ctx.exit(Exit.OK if final["status"] == "SUCCEEDED" else Exit.BUILD_FAILED)


@cli.command(epilog="\b\nExamples:\n  voltabuild wait b-0123456789abcdef0123\n"
             "  voltabuild wait b-0123456789abcdef0123 --timeout 2h --json > build.json\n\n"
             "\b\nExit codes: 0 SUCCEEDED, 1 FAILED, CANCELLED or TIMED_OUT, 3 gave up (--timeout),\n"
             "130 interrupted; the build itself goes on after 3 or 130.")
@click.argument("build_id", metavar="ID")
@click.option("--timeout", metavar="DURATION", help="Give up after this long: 90s, 15m, 2h (a bare number is minutes).")
@json_option
@click.pass_context
def wait(ctx: click.Context, build_id: str, timeout: str | None, as_json: bool) -> None:
    """Wait for a build to end, showing its progress on stderr.

    On a terminal one line is updated in place (status, phase, elapsed time, latest log
    line); piped, a line is printed at each change. The final build goes to stdout.
    Returns at once if the build has already ended.
    """
    _wait_and_exit(ctx, build_id, None, _duration(timeout), as_json)


# ---- frameworks / config --------------------------------------------------------
@cli.command(epilog="\b\nExamples:\n  voltabuild frameworks\n  voltabuild frameworks pytorch\n"
             "  voltabuild frameworks --json | jq '.frameworks[].framework'")
@click.argument("name", required=False)
@json_option
@click.pass_context
def frameworks(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """What can be built: frameworks, versions, CUDA and Python, defaults, GPU families.

    For each version and CUDA release it lists the instance families whose GPU can run
    that build (CUDA 13 does not run on p3's V100, for example).
    """
    catalog = _rt(ctx).api().frameworks()
    if name:
        chosen = [f for f in catalog.get("frameworks", []) if f.get("framework") == name]
        if not chosen:
            known = ", ".join(f.get("framework", "") for f in catalog.get("frameworks", []))
            raise CliError(f"unknown framework {name!r}; known frameworks: {known}", Exit.USAGE)
        catalog = {**catalog, "frameworks": chosen}
    click.echo(render.to_json(catalog) if as_json else render.frameworks_text(catalog))


@cli.command("config", epilog="\b\n" + CONFIG_HELP)
@json_option
@click.pass_context
def config_(ctx: click.Context, as_json: bool) -> None:
    """Show the API URL and key in use and where each came from (the key is masked)."""
    cfg = _rt(ctx).config()
    key = cfg.api_key
    masked = (key[:4] + "…" + f" ({len(key)} characters)") if key else None
    data = {"api_url": cfg.api_url, "api_key": masked, "sources": cfg.sources}
    if as_json:
        click.echo(render.to_json(data))
        return
    click.echo(f"api_url  {cfg.api_url or '(not set)'}" + (f"   from {cfg.sources['api_url']}" if cfg.api_url else ""))
    click.echo(f"api_key  {masked or '(not set)'}" + (f"   from {cfg.sources['api_key']}" if key else ""))


@cli.command(epilog="\b\nExamples:\n  voltabuild doctor\n  voltabuild doctor --stage prod\n"
             "  voltabuild doctor --no-aws --json\n\b\nExit codes: 0 nothing wrong, 1 something is (see fix:)")
@click.option("--stage", default="dev", show_default=True, help="The deployment stage whose AWS resources to check.")
@click.option("--aws/--no-aws", "check_aws", default=True, show_default=True,
              help="With AWS credentials: check the stage's alarms, queues and Slack parameters.")
@json_option
@click.pass_context
def doctor(ctx: click.Context, stage: str, check_aws: bool, as_json: bool) -> None:
    """Check the setup: API URL and key, the API's health, the catalog and, with AWS
    credentials, the stage's alarms, queue depths and Slack webhook parameters. Prints
    what is wrong and how to fix it (voltabuild_cli/doctor.py)."""
    from voltabuild_cli import doctor as checks

    rt = _rt(ctx)
    found = checks.api_checks(rt.config(), rt.api)
    if check_aws:
        found += checks.aws_checks(stage)
    result = checks.report(found)
    click.echo(render.to_json(result) if as_json else "\n".join(c.line() for c in found))
    ctx.exit(Exit.OK if result["ok"] else Exit.BUILD_FAILED)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="voltabuild", obj=Runtime())


if __name__ == "__main__":  # pragma: no cover
    main()
