"""The local stack: voltabuild on one machine, no AWS account.

moto server (DynamoDB, SQS, SSM, CloudWatch Logs, ECR, EC2, IAM) on loopback, the real
API under ``chalice local``, the local worker (the app's queue consumers, schedules and
event handlers, plus the executor that plays each EC2 instance), a webhook sink for
Slack and Debian's ``docker-registry``. ``Stack.up()`` starts what is not running and
writes ``<state>/local.env``; ``Stack.down()`` stops exactly what it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import requests

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
STAGE = "dev"
DEFAULT_PORTS = {"moto": 5100, "registry": 5101, "sink": 5102, "api": 8010}
ALL_SERVICES = ("moto", "registry", "sink", "api", "worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}\n{tail}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class EndpointSession:
    """A boto3 session whose clients all talk to the emulated AWS endpoint."""

    def __init__(self, endpoint: str) -> None:
        self._session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.endpoint = endpoint
        self.region_name = REGION

    def client(self, name: str):
        return self._session.client(name, endpoint_url=self.endpoint)


@dataclass
class Stack:
    """One local stack, its state kept in ``state_dir`` (``.voltabuild`` by default)."""

    state_dir: Path = ROOT / ".voltabuild"
    services: tuple[str, ...] = ALL_SERVICES
    ports: dict[str, int] = field(default_factory=dict)
    reaper_seconds: float = 20.0
    quiet: bool = False
    # instances the worker plays at once (each is a real build on this machine); None: the
    # worker's default, two per CPU (two were the bottleneck of a burst: the other builds
    # waited LAUNCHING for a slot while both ran, bench/stack.py)
    parallel: int | None = None

    # ---- paths ------------------------------------------------------------------
    @property
    def env_file(self) -> Path:
        return self.state_dir / "local.env"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def slack_file(self) -> Path:
        return self.state_dir / "slack.jsonl"

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    # ---- state ------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def running(self) -> dict:
        """What an earlier ``up`` started that is still alive."""
        state = self._load()
        procs = state.get("processes", {})
        if procs and all(_alive(p["pid"]) for p in procs.values()):
            return state
        return {}

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (CLI, boto3, aws cli) uses to reach this stack."""
        return self._load().get("client_env", {})

    # ---- up ---------------------------------------------------------------------
    def up(self) -> dict:
        state = self.running()
        if state:
            self._say(f"the local stack is already running (state in {self.state_dir})")
            return state
        if self._load():
            self.down()  # a half-dead earlier stack: clear it first
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        ports = {name: self.ports.get(name) or self._pick(name) for name in DEFAULT_PORTS}
        state: dict = {"ports": ports, "processes": {}, "services": list(self.services)}
        try:
            self._up(state, ports)
        except BaseException:
            self._save(state)
            self.down()
            raise
        return state

    def _pick(self, name: str) -> int:
        port = DEFAULT_PORTS[name]
        if self.state_dir == ROOT / ".voltabuild":
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return port
        return free_port()

    def _save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))

    def _start(self, state: dict, name: str, argv: list[str], env: dict[str, str], health: str | None) -> None:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        state["processes"][name] = {"pid": proc.pid, "argv": argv, "log": str(log)}
        self._save(state)
        if health:
            _wait_http(health, proc=proc, log=log)

    def _up(self, state: dict, ports: dict[str, int]) -> None:
        from infra.local import create_resources, prepare_ec2, stage_environment

        py = sys.executable
        base_env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "VOLTABUILD_")) and k not in ("LOCAL_API_KEY",)
        }
        moto_url = f"http://127.0.0.1:{ports['moto']}"
        aws_env = {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

        # 1. emulated AWS
        self._start(state, "moto", [py, "-m", "voltabuild_local.moto_server", "--port", str(ports["moto"])],
                    {**base_env, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "MOTO_DISABLE_GLOBAL_CORS": "true"}, f"{moto_url}/moto-api/")
        session = EndpointSession(moto_url)
        resources = create_resources(session, STAGE)
        upload_catalog_contexts(session.client("s3"), resources["ContextsBucket"])
        ec2_env = prepare_ec2(session, f"voltabuild-{STAGE}-builder", subnets=3)

        api_url = f"http://127.0.0.1:{ports['api']}"
        registry = f"127.0.0.1:{ports['registry']}"
        sink_url = f"http://127.0.0.1:{ports['sink']}"
        api_key = secrets.token_urlsafe(24)
        app_env = {
            **base_env, **aws_env, **stage_environment(resources, STAGE), **ec2_env,
            "LOCAL_API_KEY": api_key,
            "PUBLIC_API_URL": api_url,
            "IMAGE_REGISTRY": registry,
            # one key drives every local build (the demo, the e2e bursts of 20): its own
            # limits as roomy as the stage's; tests/security holds the per-key quotas
            "MAX_ACTIVE_BUILDS": "50",
            "MAX_ACTIVE_BUILDS_PER_KEY": "50",
            "MAX_GPU_HOURS_PER_KEY_DAY": "10000",
            "VOLTABUILD_LOCAL_WINS": "MAX_ACTIVE_BUILDS,MAX_ACTIVE_BUILDS_PER_KEY,MAX_GPU_HOURS_PER_KEY_DAY",
            "VCS_REF": _git_revision(),
            # git sources over plain http, to http://127.0.0.1:PORT/ only: a bare repository served
            # by `python -m voltabuild_local.gitserver` (issue 20; README "Build your own")
            "GIT_ALLOW_LOOPBACK_HTTP": "1",
        }
        self._slack_parameters(session, sink_url, app_env)

        # 2. the registry and the Slack sink
        if "registry" in self.services:
            cfg = self._registry_config(ports["registry"])
            self._start(state, "registry", ["/usr/bin/docker-registry", "serve", str(cfg)], base_env,
                        f"http://{registry}/v2/")
        if "sink" in self.services:
            self._start(state, "sink", [py, "-m", "voltabuild_local.sink", "--port", str(ports["sink"]),
                                        "--out", str(self.slack_file)], base_env, f"{sink_url}/health")

        # 3. the API and the worker
        if "api" in self.services:
            self._start(state, "api", [py, "-m", "voltabuild_local.api_server", "--host", "127.0.0.1",
                                       "--port", str(ports["api"]), "--stage", STAGE],
                        app_env, f"{api_url}/health")
        if "worker" in self.services:
            prepare_local_base()
            self._start(state, "worker", [py, "-m", "voltabuild_local.worker",
                                          "--reaper-seconds", str(self.reaper_seconds),
                                          *(["--parallel", str(self.parallel)] if self.parallel else [])],
                        {**app_env, "VOLTABUILD_LOCAL_STATE": str(self.state_dir)}, None)

        client_env = {**aws_env, "VOLTABUILD_API_URL": api_url, "VOLTABUILD_API_KEY": api_key,
                      "VOLTABUILD_REGISTRY": registry, "VOLTABUILD_SLACK_SINK": sink_url}
        state.update(client_env=client_env, app_env={k: v for k, v in app_env.items() if k not in base_env},
                     resources=resources)
        self._save(state)
        self.env_file.write_text(
            "# written by `make up`: the local stack's endpoints (source it, or let the CLI read it)\n"
            + "".join(f"{k}={v}\n" for k, v in client_env.items())
        )

    def _slack_parameters(self, session: EndpointSession, sink_url: str, app_env: dict[str, str]) -> None:
        ssm = session.client("ssm")
        for channel in app_env.get("SLACK_CHANNELS", "default").split(","):
            ssm.put_parameter(Name=f"/voltabuild/{STAGE}/slack/{channel}", Type="SecureString",
                              Value=f"{sink_url}/hooks/{channel}", Overwrite=True)

    def _registry_config(self, port: int) -> Path:
        storage = self.state_dir / "registry"
        storage.mkdir(exist_ok=True)
        cfg = self.state_dir / "registry.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '127.0.0.1:{port}'}}\n"
        )
        return cfg

    # ---- down -------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop exactly the processes this stack started (by pid and process group)."""
        state = self._load()
        stopped = []
        for name, proc in reversed(list(state.get("processes", {}).items())):
            pid = proc["pid"]
            if not _alive(pid):
                continue
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                continue
            stopped.append(name)
        deadline = time.monotonic() + 10
        for proc in state.get("processes", {}).values():
            while _alive(proc["pid"]) and time.monotonic() < deadline:
                _reap(proc["pid"])
                time.sleep(0.05)
            if _alive(proc["pid"]):
                try:
                    os.killpg(proc["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(proc["pid"])
        for path in (self.state_file, self.env_file):
            path.unlink(missing_ok=True)
        return stopped


def upload_catalog_contexts(s3, bucket: str, root: Path = ROOT) -> dict[str, str]:
    """Every locked combination's catalog context (its Dockerfile and lock, issue 19) into the
    contexts bucket under ``catalog/sha256/<hex>``, as scripts/deploy.sh does for a stage: the
    launcher, reading this checkout (no bundle manifest), presigns the same digests."""
    from chalicelib.launching import catalog_contexts
    from chalicelib.specs.catalog import load_catalog

    tarballs = catalog_contexts.locked_tarballs(load_catalog(root))
    manifest = catalog_contexts.manifest_of(tarballs)
    for key, data in tarballs.items():
        s3.put_object(Bucket=bucket, Key=catalog_contexts.key_of(manifest[key]), Body=data)
    return manifest


def _git_revision() -> str:
    """The checkout's commit, for the images' org.opencontainers.image.revision label."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def prepare_local_base() -> None:
    """The canary's default BASE_IMAGE (a public busybox) cannot be pulled here: make one
    from Debian's busybox-static and give it that name in buildah's local storage, so the
    canary builds unchanged and without network. Nothing to do where Docker builds."""
    from chalicelib.specs.catalog import load_catalog
    from voltabuild_local.worker import detect_builder

    if detect_builder() != "buildah":
        return
    base = load_catalog().frameworks["canary"].build_args["BASE_IMAGE"].default
    subprocess.run(["bash", str(ROOT / "dockerfiles/canary/make-local-base.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["buildah", "--storage-driver", "vfs", "tag", "localhost/voltabuild/busybox:local", base],
                   check=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
