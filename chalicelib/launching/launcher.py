"""The launcher: turns a QUEUED build attempt into a spot GPU instance running the host script.

Fed by the launch queue (``{"build_id": ..., "attempt": N}``; a new build's message also
carries its ``timeout_minutes``, and then the LAUNCHING write comes first and the build is
read only when it loses). The same attempt is never
launched twice: the build moves QUEUED -> LAUNCHING in one conditional write (on status
*and* attempt) before RunInstances is called, and RunInstances carries a ClientToken, so a
duplicate message, a second launcher or a retried API call cannot start a second instance.

What is recorded for the rest of the system:
- at LAUNCHING: ``launch_started_at`` (a crash before RunInstances leaves a LAUNCHING build
  with no ``instance_id``: the reaper relaunches or fails it), ``deadline_at`` and
  ``token_hash`` (sha256 of the per-attempt token that only the user-data carries);
- once launched: ``instance`` (InstanceInfo) and the top-level ``instance_id`` (GSI
  by-instance). The instance is tagged ``voltabuild:build-id``, ``voltabuild:stage``,
  ``voltabuild:attempt`` and ``Name``.

A launcher that dies between the LAUNCHING write and recording its instance (a Lambda
timeout, a crash) leaves the message on the queue: its redelivery finds the attempt
LAUNCHING with no instance recorded and *resumes* it. An instance tagged with this build
and attempt (RunInstances got through) is recorded as it is; otherwise the attempt is
launched now with a fresh token (the old one lived only in the dead launcher's memory) and
ClientTokens of its own. moto ignores ClientToken, and EC2 refuses a reused one with other
parameters, so the tags, not the token, are what finds an earlier launch. The EC2 handlers
and the reaper adopt such an instance too (see lifecycle.py), whichever comes first.

Catalog and rendering errors (a version that left the catalog after the build was
accepted, a broken deployment) are permanent: the build fails at once with the reason.

Capacity errors move on to the next instance type x subnet; when every one failed the build
goes back to QUEUED and the message comes back later (SQS delay, doubling) until
``max_retries`` rounds, then FAILED with what was tried. Other errors fail the build at once.

Over 300 lines: one launch message's whole path (resume, rounds over types, subnets and
markets, recording the instance, the endings) plus the AMI, root-device and price lookups.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib import clock, observability
from chalicelib.builds.names import BUILD_ID
from chalicelib.builds.records import BuildRecord, token_hash
from chalicelib.builds.schemas import InstanceInfo
from chalicelib.builds.states import Status
from chalicelib.builds.store import (
    BuildStore,
    ConditionFailed,
    all_of,
    at_attempt,
    in_stage,
    not_cancelled,
    on_instance,
    without_instance,
    without_token,
)
from chalicelib.builds.transitions import Transitions
from chalicelib.clock import iso
from chalicelib.custom.custom_builds import SourceError, launch_spec, prepare_source
from chalicelib.errors import BadRequest, BuildNotFound, CatalogError, InvalidTransition
from chalicelib.events.instances import TAG_ATTEMPT, TAG_BUILD, TAG_BUILD_STAGE, TAG_STAGE
from chalicelib.launching.catalog_contexts import CatalogContexts
from chalicelib.launching.hostscript import HostConfig, RenderError, candidate_tag, render, user_data
from chalicelib.launching.warmcache import TtlCache
from chalicelib.queues import Queue
from chalicelib.specs.catalog import Catalog

log = logging.getLogger("voltabuild.launcher")

# Try the next instance type / subnet.
_UNKNOWN = object()  # a spot price that could not be read (not kept by the warm cache)
# how long a warm launcher reuses an AMI id (from SSM), an AMI's root device and a spot price
WARM_CACHE_SECONDS = 300

CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported",
    "InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientCapacity",
})
# Nothing wrong with this build: stop this round, try again later.
TRANSIENT_ERRORS = frozenset({
    "RequestLimitExceeded", "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
    "Throttling", "ThrottlingException",
})


class LaunchMessage(BaseModel):
    """A launch queue message."""

    model_config = ConfigDict(extra="ignore")

    build_id: str = Field(pattern=BUILD_ID.pattern)
    attempt: int = Field(ge=1)
    # the build's timeout, sent with a new build's message: the launcher then writes before
    # it reads (one call less); a message without it (a relaunch) reads the build first
    timeout_minutes: int | None = Field(None, ge=1)
    # a split build's test stage (issue 23), launched while the build stays RUNNING
    stage: Literal["build", "test"] | None = None


@dataclass(frozen=True)
class LaunchConfig:
    stage: str
    host: HostConfig
    ami_id: str = ""
    ami_parameter: str = ""
    ami_overrides: dict[str, str] = field(default_factory=dict)  # family -> AMI id or SSM parameter
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str = ""
    instance_profile: str = ""
    on_demand_fallback: bool = False
    max_retries: int = 5
    price_table: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one message did: launched, ignored, retry (requeued with a delay), failed, cancelled."""

    action: str
    detail: str = ""
    instance_id: str | None = None


def stage_role(record: BuildRecord) -> str:
    """What the host script of the record's next instance does: ``all`` (an unsplit build),
    or a split build's current stage, ``build`` or ``test`` (issue 23)."""
    return record.stage if record.split and record.stage in ("build", "test") else "all"


def backoff_seconds(round_: int) -> int:
    """Delay before launch round ``round_`` (1-based): 60 s doubling, at most SQS's 900 s."""
    return min(900, 60 * 2 ** max(0, round_ - 1))


class _Permanent(Exception):
    """A launch error no retry can fix (its message becomes the build's reason)."""


class Launcher:
    def __init__(self, store: BuildStore, transitions: Transitions, launch_queue: Queue, catalog: Catalog,
                 ec2, ssm, cfg: LaunchConfig, contexts=None, repositories=None) -> None:
        self.contexts = contexts  # contexts.ContextLinks: presigned GETs of uploaded contexts (issue 20)
        self.repositories = repositories  # custom_builds.Repositories: a build's own repository (issue 20)
        self.store = store
        self.transitions = transitions
        self.queue = launch_queue
        self.catalog = catalog
        self.ec2 = ec2
        self.ssm = ssm
        self.cfg = cfg
        self._warm = TtlCache(WARM_CACHE_SECONDS)  # AMI ids, root devices, spot prices
        # a catalog build's context with its lock: presigned GETs of the contexts bucket (issue 19)
        self.catalog_contexts = CatalogContexts(catalog, contexts)

    # ---- entry point --------------------------------------------------------------------
    def handle(self, body: str | dict) -> Outcome:
        try:
            msg = LaunchMessage.model_validate(json.loads(body) if isinstance(body, str) else body)
        except (ValueError, ValidationError) as e:
            return self._note(Outcome("ignored", f"not a launch message: {str(e)[:200]}"))
        observability.bind_build(msg.build_id)
        if msg.timeout_minutes is not None:
            return self._launch_first(msg)
        try:
            record = self.store.get_record(msg.build_id)
        except BuildNotFound:
            return self._note(Outcome("ignored", f"{msg.build_id}: no such build"))
        return self._decide(record, msg)

    def _decide(self, record: BuildRecord, msg: LaunchMessage) -> Outcome:
        attempt = record.attempt
        if record.status == Status.LAUNCHING and attempt == msg.attempt and not record.instance_id:
            return self._resume(record, msg)
        if (record.status == Status.RUNNING and record.stage == "test" and attempt == msg.attempt
                and not record.instance_id):
            # a split build's test stage (issue 23): the build stays RUNNING while it launches
            return self._resume(record, msg) if record.token_hash else self._launch_test(record, msg)
        if record.status != Status.QUEUED or attempt != msg.attempt:
            return self._note(Outcome(
                "ignored", f"{msg.build_id}: stale or duplicate message for attempt {msg.attempt} "
                f"(the build is {record.status.value}, attempt {attempt})"))
        if record.cancel_requested:
            return self._cancel(msg)
        return self._launch(record, msg)

    # ---- the launch ---------------------------------------------------------------------
    def _launch(self, record: BuildRecord, msg: LaunchMessage) -> Outcome:
        token = secrets.token_urlsafe(32)
        started = clock.now()
        try:
            record = self.transitions.move(
                msg.build_id, Status.LAUNCHING, expect=[Status.QUEUED],
                message=f"launching attempt {msg.attempt}",
                fields={
                    "launch_started_at": iso(started),
                    "deadline_at": iso(started + timedelta(minutes=record.timeout_minutes)),
                    "token_hash": token_hash(token),
                },
                extra_condition=at_attempt(msg.attempt),
            )
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{msg.build_id}: another launcher took attempt {msg.attempt}"))
        return self._start(record, msg, token)

    def _launch_test(self, record: BuildRecord, msg: LaunchMessage) -> Outcome:
        """The test stage of a split build whose build stage reported BUILT: the report token
        is drawn in one conditional write (this attempt, the test stage, no instance and no
        token yet), so a duplicate message or a second launcher cannot start a second instance."""
        if record.cancel_requested:
            return self._cancel(msg, expect=Status.RUNNING)
        token = secrets.token_urlsafe(32)
        started = clock.now()
        try:
            record = self.store.update_fields(
                msg.build_id, {"launch_started_at": iso(started), "token_hash": token_hash(token),
                               "deadline_at": iso(started + timedelta(minutes=record.timeout_minutes))},
                expect=[Status.RUNNING],
                extra_condition=all_of(at_attempt(msg.attempt), in_stage("test"), without_instance(),
                                       without_token(), not_cancelled()))
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{msg.build_id}: another launcher took attempt {msg.attempt}"))
        return self._start(record, msg, token)

    def _launch_first(self, msg: LaunchMessage) -> Outcome:
        """QUEUED -> LAUNCHING for this attempt, unless a cancel was requested, before any
        read: the write returns the build. When it loses, the build as the failed condition
        found it decides, as a read would have (resume, cancel, or a stale message)."""
        token = secrets.token_urlsafe(32)
        started = clock.now()
        try:
            record = self.transitions.move(
                msg.build_id, Status.LAUNCHING, expect=[Status.QUEUED],
                message=f"launching attempt {msg.attempt}",
                fields={
                    "launch_started_at": iso(started),
                    "deadline_at": iso(started + timedelta(minutes=int(msg.timeout_minutes or 0))),
                    "token_hash": token_hash(token),
                },
                extra_condition=all_of(at_attempt(msg.attempt), not_cancelled()),
            )
        except BuildNotFound:
            return self._note(Outcome("ignored", f"{msg.build_id}: no such build"))
        except ConditionFailed as e:
            return self._decide(e.old, msg)
        return self._start(record, msg, token)

    def _resume(self, record: BuildRecord, msg: LaunchMessage) -> Outcome:
        """The message came back for a LAUNCHING attempt with no instance recorded: the
        launcher that took it died (or timed out) after the LAUNCHING write. Its instance,
        if RunInstances got that far, carries the attempt's tags: record it. Otherwise launch
        now, with a fresh token (the old one only ever existed in that launcher's memory)."""
        found = self._launched(record)
        if found is not None:
            outcome = self._record(record, msg, found, "spot" if found.get("InstanceLifecycle") == "spot"
                                   else "on-demand")
            if outcome.action == "launched" and record.cancel_requested:
                self.ec2.terminate_instances(InstanceIds=[found["InstanceId"]])  # the cancel did not see it
            return outcome
        if record.cancel_requested:
            return self._cancel(msg, expect=record.status)
        token = secrets.token_urlsafe(32)
        try:
            record = self.store.update_fields(
                msg.build_id, {"token_hash": token_hash(token)}, expect=[record.status],
                extra_condition=at_attempt(msg.attempt) & without_instance())
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{msg.build_id}: attempt {msg.attempt} moved on"))
        return self._start(record, msg, token, resumed=True)

    def _start(self, record: BuildRecord, msg: LaunchMessage, token: str, *, resumed: bool = False) -> Outcome:
        """RunInstances for a LAUNCHING attempt whose ``token_hash`` is ``token``'s.

        Catalog and rendering errors (the catalog changed since the build was accepted, or
        the deployment is broken) are permanent: the build fails now with the reason."""
        try:
            spec = launch_spec(self.catalog, record)
            source = prepare_source(record, self.contexts, self.repositories)
            if not record.source:  # valid through boot, the build and a margin, as an upload's
                source = self.catalog_contexts.source_for(record, (record.timeout_minutes + 60) * 60)
        except (BadRequest, CatalogError, SourceError) as e:
            return self._fail(msg.build_id, f"launch failed: {e}", msg.attempt)
        build_date = record.launch_started_at or iso(clock.now())
        hosts: dict[str, tuple[str, str, bytes]] = {}  # per instance type: AMI id, root device, user-data
        role = stage_role(record)
        split = {} if role == "all" else {
            "stage_role": role,
            # the test stage promotes (and untags) what the build stage pushed, under its tag
            "candidate": (record.candidate_tag if role == "test" else None) or candidate_tag(record.id, record.attempt),
            "candidate_digest": record.candidate_digest or ""}

        def host(itype: str) -> tuple[str, str, bytes]:
            if itype not in hosts:
                image_id = self._ami(itype, cpu=role == "build")
                data = render(record, self.catalog, self.cfg.host, token=token, build_date=build_date,
                              instance_type=itype, **source, **split)
                hosts[itype] = (image_id, self._root_device(image_id), user_data(data))
            return hosts[itype]

        rounds = record.launch_rounds
        # a resumed launch renders another token: its ClientTokens must differ from the
        # dead launcher's (same token, other parameters is an error in EC2)
        suffix = f"-r{token_hash(token)[:8]}" if resumed else ""
        tried: list[str] = []
        i = 0
        markets = ["spot", "on-demand"] if self.cfg.on_demand_fallback else ["spot"]
        for market in markets:
            for itype in self._order(record):
                try:
                    image_id, root_device, data = host(itype)
                except (_Permanent, RenderError, BadRequest, CatalogError) as e:
                    return self._fail(msg.build_id, f"launch failed: {itype}: {e}", msg.attempt)
                for subnet in self.cfg.subnet_ids or (None,):
                    where = f"{itype} in {subnet or 'the default subnet'} ({market})"
                    client_token = f"{msg.build_id}-{msg.attempt}" + (f"-{rounds}-{i}" if rounds or i else "") + suffix
                    i += 1
                    try:
                        inst = self._run(record, spec, market, itype, subnet, image_id, root_device, data,
                                         client_token)
                    except ClientError as e:
                        code = e.response.get("Error", {}).get("Code", "Unknown")
                        text = e.response.get("Error", {}).get("Message", "")
                        if code in CAPACITY_ERRORS:
                            tried.append(f"{where}: {code}")
                            log.info("%s: %s: %s %s", msg.build_id, where, code, text)
                            continue
                        if code in TRANSIENT_ERRORS:
                            tried.append(f"{where}: {code}")
                            return self._retry_later(record, msg, tried)
                        return self._fail(msg.build_id, f"launch failed: RunInstances {where}: {code}: {text}",
                                          msg.attempt)
                    return self._record(record, msg, inst, market)
        return self._retry_later(record, msg, tried)

    def _launched(self, record: BuildRecord) -> dict | None:
        """A live instance already launched for the record's current attempt, if any."""
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{TAG_BUILD}", "Values": [record.id]},
            {"Name": f"tag:{TAG_ATTEMPT}", "Values": [str(record.attempt)]},
            {"Name": f"tag:{TAG_STAGE}", "Values": [self.cfg.stage]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ])
        found = [i for page in pages for res in page.get("Reservations", []) for i in res.get("Instances", [])]
        return min(found, key=lambda i: str(i.get("LaunchTime", ""))) if found else None

    def _run(self, record: BuildRecord, spec, market: str, itype: str, subnet: str | None, image_id: str,
             root_device: str, data: bytes, client_token: str) -> dict:
        role = stage_role(record)
        tags = [
            {"Key": TAG_BUILD, "Value": record.id},
            {"Key": TAG_STAGE, "Value": self.cfg.stage},
            {"Key": TAG_ATTEMPT, "Value": str(record.attempt)},
            {"Key": "Name", "Value": f"voltabuild-{self.cfg.stage}-{record.framework}-{record.id}"
                                     + ("" if role == "all" else f"-{role}")},
        ]
        if role != "all":
            tags.append({"Key": TAG_BUILD_STAGE, "Value": role})
        kwargs: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": itype,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": data,
            "ClientToken": client_token,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [{"DeviceName": root_device, "Ebs": {
                "VolumeSize": spec.root_volume_gb, "VolumeType": "gp3", "Encrypted": True,
                "DeleteOnTermination": True}}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if market == "spot":
            spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if record.max_price:
                spot["MaxPrice"] = f"{record.max_price:.4f}"
            kwargs["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        if subnet:
            kwargs["SubnetId"] = subnet
        if self.cfg.security_group_id:
            kwargs["SecurityGroupIds"] = [self.cfg.security_group_id]
        if self.cfg.instance_profile:
            key = "Arn" if self.cfg.instance_profile.startswith("arn:") else "Name"
            kwargs["IamInstanceProfile"] = {key: self.cfg.instance_profile}
        return self.ec2.run_instances(**kwargs)["Instances"][0]

    def _record(self, record: BuildRecord, msg: LaunchMessage, inst: dict, market: str) -> Outcome:
        iid = inst["InstanceId"]
        az = inst.get("Placement", {}).get("AvailabilityZone")
        launched = inst.get("LaunchTime")
        info = InstanceInfo(
            id=iid, type=inst["InstanceType"], az=az, lifecycle=market,
            price=self._price(inst["InstanceType"], az) if market == "spot" else None,
            launched_at=iso(launched) if launched else iso(clock.now()),
        )
        try:
            # only for this attempt, and only while no other instance is recorded for it (an EC2
            # event or the reaper may have adopted this very instance first: that is fine)
            role = stage_role(record)
            fields = {"instance": info.model_dump(mode="json"), "instance_id": iid, "launch_rounds": 0}
            if role != "all":  # a split build keeps each stage's instance (issue 23)
                fields[f"stages.{role}.instance"] = fields["instance"]
            self.store.update_fields(
                msg.build_id, fields,
                expect=[Status.LAUNCHING, Status.RUNNING],
                extra_condition=at_attempt(msg.attempt) & (without_instance() | on_instance(iid)))
        except InvalidTransition:
            # the build ended or moved on while we launched (cancelled, timed out, relaunched):
            # the instance must go
            self.ec2.terminate_instances(InstanceIds=[iid])
            return self._note(Outcome("ignored", f"{msg.build_id}: moved on during the launch; {iid} terminated",
                                      iid))
        return self._note(Outcome("launched", f"{msg.build_id}: {info.type} {market} in {az}", iid))

    # ---- endings -------------------------------------------------------------------------
    def _retry_later(self, record: BuildRecord, msg: LaunchMessage, tried: list[str]) -> Outcome:
        rounds = record.launch_rounds + 1
        what = "; ".join(tried)
        if rounds > self.cfg.max_retries:
            return self._fail(msg.build_id, f"no capacity after {rounds} launch rounds; last round tried: {what}")
        delay = backoff_seconds(rounds)
        try:
            self.transitions.move(
                msg.build_id, Status.QUEUED, expect=[Status.LAUNCHING, Status.RUNNING],
                message=f"no capacity ({what}); trying again in {delay} s",
                extra_condition=at_attempt(msg.attempt) & without_instance(),
                # queued_at = when the delayed message is due: the reaper's "stuck in QUEUED"
                # grace counts from then, so waiting for capacity never looks like a lost message
                fields={"launch_rounds": rounds, "queued_at": iso(clock.now() + timedelta(seconds=delay))},
                remove=["token_hash", "launch_started_at", "deadline_at"],
            )
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{msg.build_id}: moved on during the launch"))
        self.queue.send({"build_id": msg.build_id, "attempt": msg.attempt}, delay_seconds=delay)
        return self._note(Outcome("retry", f"{msg.build_id}: round {rounds} in {delay} s; tried {what}"))

    def _fail(self, build_id: str, reason: str, attempt: int | None = None) -> Outcome:
        # a split build's test stage launches from RUNNING (issue 23): only that attempt, before its instance
        when = all_of(at_attempt(attempt) if attempt is not None else None, without_instance())
        try:
            self.transitions.move(build_id, Status.FAILED, expect=[Status.LAUNCHING, Status.RUNNING],
                                  message=reason[:2000], fields={"reason": reason[:4000]}, remove=["token_hash"],
                                  extra_condition=when)
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{build_id}: moved on during the launch"))
        return self._note(Outcome("failed", f"{build_id}: {reason}"))

    def _cancel(self, msg: LaunchMessage, expect: Status = Status.QUEUED) -> Outcome:
        try:
            self.transitions.move(msg.build_id, Status.CANCELLED, expect=[expect],
                                  message="cancelled by request before launch",
                                  extra_condition=at_attempt(msg.attempt) & without_instance())
        except InvalidTransition:
            return self._note(Outcome("ignored", f"{msg.build_id}: moved on"))
        return self._note(Outcome("cancelled", msg.build_id))

    # ---- lookups -------------------------------------------------------------------------
    @staticmethod
    def _order(record: BuildRecord) -> list[str]:
        """The build's instance types, those whose host failed an earlier attempt last: a
        host failure moves on to the next type (and comes back to it only when all failed).
        A split build's build stage runs on its CPU types (issue 23), the test stage on the
        build's GPU types."""
        failed = {f.instance_type for f in record.host_failures}
        if stage_role(record) == "build":
            return list(record.stages["build"].instance_types)
        types = list(record.instance_types)
        return [t for t in types if t not in failed] + [t for t in types if t in failed]

    def ami_source(self, instance_type: str, *, cpu: bool = False) -> str:
        """Where ``instance_type``'s AMI comes from: an AMI id or an SSM parameter. A family's
        AMI_OVERRIDES entry first, then AMI_ID, then AMI_PARAMETER (both for every family),
        then the hardware table's path for the family.

        A split build's CPU stage (``cpu``, issue 23) needs no GPU driver: AMI_OVERRIDES'
        ``cpu`` entry, then AMI_ID, then the hardware table's ``cpu_ami`` (stock Ubuntu 22.04,
        where the host script installs docker and the AWS CLI; no DLAMI GPU image to boot)."""
        hw = self.catalog.hardware
        if cpu:
            return self.cfg.ami_overrides.get("cpu") or self.cfg.ami_id or hw.cpu_ami
        family = hw.family_of(instance_type)
        if family in self.cfg.ami_overrides:
            return self.cfg.ami_overrides[family]
        if self.cfg.ami_id or self.cfg.ami_parameter:
            return self.cfg.ami_id or self.cfg.ami_parameter
        path = hw.ami_of(instance_type) if hw.is_known_instance_type(instance_type) else None
        if path is None:
            raise _Permanent(f"no AMI boots instance family {family}")
        return path.parameter

    def _ami(self, instance_type: str, *, cpu: bool = False) -> str:
        source = self.ami_source(instance_type, cpu=cpu)
        if not source.startswith("/"):
            return source
        try:
            return self._warm.get(("ami", source),
                                  lambda: self.ssm.get_parameter(Name=source)["Parameter"]["Value"])
        except ClientError as e:
            err = e.response.get("Error", {})
            raise _Permanent(f"AMI parameter {source}: {err.get('Code')}: {err.get('Message', '')}") from None

    def _root_device(self, image_id: str) -> str:
        try:
            images = self._warm.get(("image", image_id),
                                    lambda: self.ec2.describe_images(ImageIds=[image_id])["Images"], keep=bool)
        except ClientError as e:
            err = e.response.get("Error", {})
            raise _Permanent(f"AMI {image_id}: {err.get('Code')}: {err.get('Message', '')}") from None
        if not images:
            raise _Permanent(f"AMI {image_id} does not exist or is not visible to this account")
        return images[0].get("RootDeviceName") or "/dev/sda1"

    def _price(self, itype: str, az: str | None) -> float | None:
        """The spot price at launch: spot price history (reused for a few minutes by a warm
        launcher), else the configured table."""
        price = self._warm.get(("price", itype, az), lambda: self._spot_price(itype, az),
                               keep=lambda p: p is not _UNKNOWN)  # an error is asked again next time
        return price if isinstance(price, float) else self.cfg.price_table.get(itype)

    def _spot_price(self, itype: str, az: str | None) -> float | None | object:
        """The newest price in the history, None when it has none, _UNKNOWN when it could not be read."""
        kwargs: dict[str, Any] = {"InstanceTypes": [itype], "ProductDescriptions": ["Linux/UNIX"],
                                  "StartTime": clock.now(), "MaxResults": 5}
        if az:
            kwargs["Filters"] = [{"Name": "availability-zone", "Values": [az]}]
        try:
            history = self.ec2.describe_spot_price_history(**kwargs).get("SpotPriceHistory", [])
        except (ClientError, BotoCoreError) as e:  # a timeout here must not lose the launched instance
            log.info("spot price of %s in %s unknown: %s", itype, az, e)
            return _UNKNOWN
        for entry in history:
            if entry.get("InstanceType") == itype and entry.get("SpotPrice"):
                return float(entry["SpotPrice"])
        return None

    @staticmethod
    def _note(outcome: Outcome) -> Outcome:
        log.info("launch %s: %s", outcome.action, outcome.detail)
        return outcome
