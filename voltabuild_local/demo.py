"""`make demo`: the whole service on this machine — submit the canary, watch it build,
show its log, the image in the registry and the Slack message that said how it ended."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

from voltabuild_local.metrics import read_logs
from voltabuild_local.registry import image_summary
from voltabuild_local.stack import Stack
from voltabuild_local.worker import detect_builder

NO_BUILDER = """\
The demo builds a real image, and neither a Docker engine nor buildah (as root) can run here.
  - Debian/Ubuntu as root:  apt-get install buildah docker-registry busybox-static
  - or start a Docker engine (docker info must work) and run `make demo` again."""


def _say(msg: str) -> None:
    print(f"\n==> {msg}", file=sys.stderr, flush=True)


def _latest_message(stack: Stack, build_id: str, wait: float = 15.0) -> dict | None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if stack.slack_file.exists():
            for line in reversed(stack.slack_file.read_text().splitlines()):
                if build_id in line:
                    return json.loads(line)
        time.sleep(0.5)
    return None


def run_demo(stack: Stack, keep: bool = False) -> int:
    builder = detect_builder()
    if builder is None:
        print(NO_BUILDER, file=sys.stderr)
        return 1
    started_here = not stack.running()
    try:
        _say("starting the local stack (make up)")
        stack.up()
        env = {**os.environ, **stack.env}

        cli = shutil.which("voltabuild", path=os.path.dirname(sys.executable)) or "voltabuild"
        _say(f"voltabuild submit canary --wait   (builder here: {builder})")
        t0 = time.monotonic()
        proc = subprocess.run([cli, "submit", "canary", "--wait", "--json"], env=env, stdout=subprocess.PIPE)
        build = json.loads(proc.stdout or b"{}")
        print(f"\nbuild {build.get('id')} ended {build.get('status')} in {time.monotonic() - t0:.0f} s "
              f"(CLI exit code {proc.returncode})")
        if build.get("reason"):
            print(f"reason: {build['reason']}")

        _say(f"voltabuild status {build.get('id')}   (the image, its compressed size and base digest)")
        status = subprocess.run([cli, "status", str(build.get("id"))], env=env, stdout=subprocess.PIPE, text=True)
        for line in status.stdout.partition("\n  timeline")[0].splitlines():  # the timeline is below
            print(f"  {line}")

        _say(f"voltabuild logs {build.get('id')}   (the instance's log, from CloudWatch Logs; the last lines)")
        logs = subprocess.run([cli, "logs", str(build.get("id"))], env=env, stdout=subprocess.PIPE, text=True)
        lines = logs.stdout.splitlines()
        if len(lines) > 12:
            print(f"  ... {len(lines) - 12} earlier lines")
        for line in lines[-12:]:
            print(f"  {line}")

        _say("the image in the local registry")
        registry = env["VOLTABUILD_REGISTRY"]
        repo = build["image"]["repository"].split("/", 1)[1]
        for tag in build["image"]["tags"]:
            summary = image_summary(registry, repo, tag)
            if summary is None:
                print(f"  {registry}/{repo}:{tag}  (not in the registry)")
                continue
            print(f"  {registry}/{repo}:{tag}  {summary['digest']}")
        first = image_summary(registry, repo, build["image"]["tags"][0])
        if first:
            print(f"  digest in the build record: {build['image'].get('digest')}")
            for key, value in sorted(first["labels"].items()):
                print(f"    {key} = {value}")

        _say("the Slack message (received by the local webhook sink)")
        msg = _latest_message(stack, build["id"])
        if msg is None:
            print("  (no message arrived)")
        else:
            payload = msg["payload"]
            print(f"  channel: {msg['channel']}   ({len(payload.get('blocks', []))} Block Kit blocks; "
                  f"all of it in {stack.slack_file})")
            print(textwrap.fill(payload.get("text", ""), width=100, initial_indent="  ", subsequent_indent="  "))

        _say("metrics (make metrics: the EMF lines the API and the worker wrote, summed up)")
        print(read_logs(stack.log_dir).table())
        return proc.returncode
    finally:
        if keep or not started_here:
            print(f"\nthe local stack keeps running: `make down` stops it ({stack.env_file})", file=sys.stderr)
        else:
            stack.down()
            print("\nthe local stack is stopped (make demo KEEP=1 leaves it running)", file=sys.stderr)

