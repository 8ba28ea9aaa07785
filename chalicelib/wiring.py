"""Lazy, reused objects for the Lambda handlers (warm starts keep them; tests reset them).

The only place that reads ``os.environ``: everything else gets what it needs passed in.
Every domain module is imported by the factory that first needs it, never at import: a
cold start imports boto3, Chalice and this module, and each function then loads only what
it uses (the API never the Slack SDK, the notifier never the matrix expander; issue 21).
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from chalicelib.settings import Settings, check_cursor_key

if TYPE_CHECKING:
    from chalicelib.builds.builds import BuildService
    from chalicelib.builds.store import BuildStore
    from chalicelib.builds.transitions import Transitions
    from chalicelib.queues import Queue
    from chalicelib.specs.catalog import Catalog

_BOTO_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=20)


@cache
def settings() -> Settings:
    return Settings.from_env(os.environ)


@cache
def client(service: str):
    # S3's presigned POSTs and GETs (issue 20) need SigV4: regions since 2014 accept nothing else
    config = _BOTO_CONFIG.merge(Config(signature_version="s3v4")) if service == "s3" else _BOTO_CONFIG
    return boto3.session.Session().client(service, region_name=settings().region, config=config)


@cache
def catalog() -> Catalog:
    from chalicelib.specs.catalog import load_catalog

    return load_catalog()


@cache
def store() -> BuildStore:
    from chalicelib.builds.store import BuildStore

    s = settings()
    return BuildStore(client("dynamodb"), s.table_name, cursor_key=check_cursor_key(s.cursor_key),
                      max_active=s.max_active_builds)


@cache
def launch_queue() -> Queue:
    from chalicelib.queues import Queue

    return Queue(client("sqs"), settings().launch_queue_url)


@cache
def notify_queue() -> Queue:
    from chalicelib.queues import Queue

    return Queue(client("sqs"), settings().notify_queue_url)


@cache
def transitions() -> Transitions:
    from chalicelib.builds.transitions import Transitions

    return Transitions(store(), notify_queue(), notify_on_start=settings().notify_on_start)


@cache
def builds() -> BuildService:
    from chalicelib.builds.builds import BuildService

    return BuildService(store(), catalog(), settings(), launch_queue(), transitions(), instances=instances(),
                        contexts=contexts(), costs=costs(), budget=budget())


# ---- costs and groups (issue 22) ----
@cache
def costs():
    from chalicelib.costs.build_costs import BuildCosts

    s = settings()
    costs = BuildCosts(catalog(), dict(s.spot_price_table), price_ceiling=s.max_price_ceiling,
                       on_demand_table=dict(s.on_demand_price_table), on_demand_fallback=s.on_demand_fallback)
    costs.watch = budget_watch()
    return costs


@cache
def budget_watch():
    """The MONTHLY_BUDGET_USD Slack alert at 80% spent, or None when the stage sets no budget."""
    from chalicelib.costs.build_costs import BudgetWatch
    from chalicelib.notifications.notify_events import enqueue_budget

    limit = settings().monthly_budget_usd
    if limit is None:
        return None
    done = ("sent", "failed", "skipped", "unconfirmed")
    return BudgetWatch(cost_aggregates(), limit, notify=lambda month: enqueue_budget(notify_queue(), month),
                       alerted=lambda month: (store().get_notice(f"budget-alert#{month}") or {}).get("status") in done)


@cache
def cost_aggregates():
    from chalicelib.costs.costagg import CostAggregates

    return CostAggregates(client("dynamodb"), settings().table_name)


@cache
def budget():
    """The MONTHLY_BUDGET_USD check of every submit, or None when the stage sets no budget."""
    from chalicelib.costs.build_costs import Budget

    limit = settings().monthly_budget_usd
    if limit is None:
        return None
    return Budget(costs(), cost_aggregates(), lambda: (r.public() for r in store().active_records()), limit)


@cache
def groups():
    from chalicelib.builds.groups import Groups

    return Groups(builds())


@cache
def contexts():
    """The API's side of uploaded build contexts (issue 20)."""
    from chalicelib.custom.contexts import Contexts

    s = settings()
    return Contexts(client("s3"), s.contexts_bucket, max_bytes=s.context_max_bytes,
                    upload_seconds=s.context_upload_seconds, expiry_days=s.context_expiry_days)


@cache
def context_links():
    """The launcher's side: presigned GETs of uploaded contexts (issue 20)."""
    from chalicelib.custom.contexts import ContextLinks

    s = settings()
    return ContextLinks(client("s3"), s.contexts_bucket, max_bytes=s.context_max_bytes,
                        expiry_days=s.context_expiry_days)


@cache
def openapi_document() -> dict:
    from chalicelib.api.openapi import document

    return document()


@cache
def notifier():
    from chalicelib.notifications.notify import Notifier  # Slack's SDK: the notifier's alone
    from chalicelib.notifications.slack_delivery import SlackSender
    from chalicelib.notifications.webhooks import WebhookDirectory

    s = settings()
    return Notifier(
        store(), notify_queue(),
        WebhookDirectory(client("ssm"), s.slack_parameter_prefix, ttl_seconds=s.slack_webhook_cache_seconds),
        SlackSender(timeout=s.notify_timeout_seconds),
        api_url=s.api_url, channels=s.slack_channels, notify_on_start=s.notify_on_start,
        max_attempts=s.notify_max_attempts, costs=costs(), budget=budget_watch(), stage=s.stage,
    )


# ---- event-driven lifecycle ----
@cache
def instances():
    from chalicelib.events.instances import Instances

    return Instances(client("ec2"), settings().stage)


@cache
def lifecycle():
    from chalicelib.events.lifecycle import Lifecycle, LifecycleConfig
    from chalicelib.launching.pushed import PushedImages

    return Lifecycle(store(), transitions(), instances(), launch_queue(), LifecycleConfig(stage=settings().stage),
                     logs=build_logs(), pushed=PushedImages(client("ecr")), costs=costs())


@cache
def reaper():
    from datetime import timedelta

    from chalicelib.events.reaper import Reaper, ReaperConfig

    s = settings()
    config = ReaperConfig(
        launch_grace=timedelta(minutes=s.launch_grace_minutes),
        stale_heartbeat=timedelta(minutes=s.stale_heartbeat_minutes),
        orphan_grace=timedelta(minutes=s.orphan_grace_minutes),
        digest_grace=timedelta(minutes=s.digest_grace_minutes),
    )
    return Reaper(store(), lifecycle(), instances(), config, ecr=client("ecr"))


def queue_name(kind: str) -> str:
    """The name of queue ``voltabuild-<stage>-<kind>`` for an ``on_sqs_message`` mapping.
    Fixed when app.py is imported, so ``chalice package`` must run with VOLTABUILD_STAGE
    set to the stage it packages (default dev)."""
    return f"voltabuild-{os.environ.get('VOLTABUILD_STAGE', 'dev')}-{kind}"


def stage() -> str:
    """The stage this code runs as (the metrics' Stage dimension); known at import, as queue_name's."""
    return os.environ.get("VOLTABUILD_STAGE", "dev")


# ---- launcher and the instance's reports ----
@cache
def launcher():
    from chalicelib.custom.custom_builds import Repositories
    from chalicelib.launching.hostscript import HostConfig
    from chalicelib.launching.launcher import LaunchConfig, Launcher

    s = settings()
    host = HostConfig(api_url=s.api_url, region=s.region, stage=s.stage, registry=s.registry,
                      log_group=s.build_log_group, heartbeat_seconds=s.heartbeat_seconds, vcs_ref=s.vcs_ref,
                      vcs_url=s.vcs_url)
    cfg = LaunchConfig(
        stage=s.stage, host=host, ami_id=s.ami_id, ami_parameter=s.ami_parameter, subnet_ids=s.subnet_ids,
        ami_overrides=dict(s.ami_overrides),
        security_group_id=s.security_group_id, instance_profile=s.instance_profile,
        on_demand_fallback=s.on_demand_fallback, max_retries=s.launch_max_retries,
        price_table=dict(s.spot_price_table),
    )
    return Launcher(store(), transitions(), launch_queue(), catalog(), client("ec2"), client("ssm"), cfg,
                    contexts=context_links(), repositories=Repositories(client("ecr")))


@cache
def reports():
    from chalicelib.launching.pushed import PushedImages
    from chalicelib.launching.reports import Reports

    return Reports(store(), transitions(), relaunch=relauncher(), pushed=PushedImages(client("ecr")),
                   test_stage=_report_lifecycle().start_test_stage)


@cache
def _report_lifecycle():
    """The lifecycle's moves only, made without its EC2 and log clients, so the anonymous
    reports route's role touches no instance (infra/permissions): ``relaunch`` (a host
    failure queues the build again) and ``start_test_stage`` (a split build's BUILT, issue 23)."""
    from chalicelib.events.lifecycle import Lifecycle, LifecycleConfig

    return Lifecycle(store(), transitions(), None, launch_queue(), LifecycleConfig(stage=settings().stage))


@cache
def relauncher():
    """``Lifecycle.relaunch`` for the reports function (see _report_lifecycle)."""
    return _report_lifecycle().relaunch


@cache
def build_logs():
    from chalicelib.launching.buildlogs import BuildLogs

    return BuildLogs(client("logs"), settings().build_log_group, store())


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def reset() -> None:
    """Forget every cached object (tests, or a changed environment)."""
    for fn in (settings, client, catalog, store, launch_queue, notify_queue, transitions, builds,
               openapi_document, notifier, instances, lifecycle, reaper):
        fn.cache_clear()
    for fn in (launcher, reports, build_logs, relauncher):
        fn.cache_clear()
    contexts.cache_clear()  # issue 20
    for fn in (costs, cost_aggregates, budget, groups, budget_watch):  # issue 22
        fn.cache_clear()
    context_links.cache_clear()


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run with these environment variables and freshly made objects, then put both back
    (tests, benchmarks and local tools that point the app at an emulated AWS)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset()
