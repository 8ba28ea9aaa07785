"""python -m voltabuild_local up|down|status|demo|metrics — the local stack (see README)."""

from __future__ import annotations

import argparse
import sys

from voltabuild_local.stack import Stack


def _print_status(stack: Stack) -> None:
    state = stack.running()
    if not state:
        print("the local stack is not running (make up)")
        return
    env = state["client_env"]
    rows = [
        ("API (chalice local)", env["VOLTABUILD_API_URL"]),
        ("emulated AWS (moto server)", env["AWS_ENDPOINT_URL"]),
        ("OCI registry (docker-registry)", f"http://{env['VOLTABUILD_REGISTRY']}/v2/" if "registry" in state["processes"] else "-"),
        ("Slack sink", env["VOLTABUILD_SLACK_SINK"] + "/messages" if "sink" in state["processes"] else "-"),
        ("worker (queues, events, schedules, executor)", f"pid {state['processes']['worker']['pid']}" if "worker" in state["processes"] else "-"),
        ("logs", str(stack.log_dir)),
        ("metrics (the EMF lines in those logs)", "make metrics  (python -m voltabuild_local metrics)"),
        ("client settings", str(stack.env_file)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, where in rows:
        print(f"  {name:<{width}}  {where}")
    print(f"\n  try:  set -a; . {stack.env_file}; set +a; voltabuild frameworks")
    print("        aws --endpoint-url $AWS_ENDPOINT_URL dynamodb scan --table-name voltabuild-dev-builds")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m voltabuild_local", description=__doc__)
    ap.add_argument("command", choices=["up", "down", "status", "demo", "metrics"])
    ap.add_argument("--keep", action="store_true", help="demo: leave the stack running afterwards")
    args = ap.parse_args(argv)
    stack = Stack()
    if args.command == "up":
        stack.up()
        _print_status(stack)
    elif args.command == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.command == "status":
        _print_status(stack)
    elif args.command == "metrics":
        from voltabuild_local.metrics import read_logs

        print(f"metrics from the EMF lines in {stack.log_dir}/*.log (what CloudWatch would extract):\n")
        print(read_logs(stack.log_dir).table())
    else:
        from voltabuild_local.demo import run_demo

        return run_demo(stack, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
