"""Reconciling a build that pushed its image but was about to be called FAILED.

The host script pushes only after the GPU smoke test passed, and reports SUCCEEDED last.
When that report is lost (the API unreachable for a while), the instance then reports
FAILED ("pushed but the result could not be reported"), or nothing at all (it ends, its
heartbeats stop). Calling such a build FAILED would leave a FAILED build whose fresh,
tested image every tag (``latest`` too) already points at.

The choice (issue 16): such a build **SUCCEEDED**, with a note in its timeline saying what
the instance reported and what ECR holds. Rolling the tags back instead is not possible
honestly: ECR keeps no tag history, so what ``latest`` pointed at before is unknown, and the
image is the tested product the user asked for.

A build counts as pushed when it was in phase PUSHING and ECR holds *every* one of its tags
at one digest that this attempt pushed: the digest ECR's push event recorded for it
(``ecr_digest``), or, with no push event seen yet, an image pushed after the attempt
started. Anything less (a tag missing, tags at different digests, an older image, not an
ECR registry) and the build fails as reported.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.conditions import ConditionBase
from botocore.exceptions import ClientError

from chalicelib import clock
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import Phase, Status

log = logging.getLogger(__name__)
_NOT_FOUND = ("ImageNotFoundException", "RepositoryNotFoundException")
_SLACK = timedelta(minutes=1)


class PushedImages:
    """Asks ECR whether a build's tags all point at the image its attempt pushed. Takes a
    boto3 ECR client."""

    def __init__(self, ecr) -> None:
        self._ecr = ecr

    def digest(self, record: BuildRecord) -> str | None:
        """The digest every tag of ``record``'s image points at in ECR, if this attempt
        pushed it (see the module doc); None otherwise."""
        if record.phase != Phase.PUSHING:
            return None  # the host script pushes only in PUSHING: nothing was pushed
        registry, _, name = record.image.repository.partition("/")
        tags = list(record.image.tags)
        if ".dkr.ecr." not in registry or not name or not tags:
            return None  # a local registry (the local stack) is not ECR's to judge
        try:
            details = self._ecr.describe_images(
                registryId=registry.split(".", 1)[0], repositoryName=name,
                imageIds=[{"imageTag": t} for t in tags]).get("imageDetails", [])
        except ClientError as e:
            if e.response["Error"]["Code"] in _NOT_FOUND:
                return None
            raise
        digests = {d.get("imageDigest") for d in details}
        found = {t for d in details for t in d.get("imageTags", [])}
        if len(digests) != 1 or not set(tags) <= found:
            return None
        (digest,) = digests
        if record.split:
            # a split build (issue 23) pushes its tags only in the test stage's promotion, to
            # the tested candidate; one whose candidate tag stayed on the image is not done (the
            # candidate- lifecycle rule would expire the image): it fails as reported
            promoted = record.stage == "test" and digest == record.candidate_digest
            return digest if promoted and record.candidate_tag not in found else None
        seen = record.ecr_digest
        if seen:
            return digest if seen == digest else None
        pushed_at = details[0].get("imagePushedAt")
        since = _at(record.launch_started_at or (record.instance.launched_at if record.instance else None))
        # ECR's times may be whole seconds: a minute's slack (no build pushes within a
        # minute of its launch, so an image pushed before that is not this attempt's)
        if not isinstance(pushed_at, datetime) or since is None or pushed_at < since - _SLACK:
            return None
        return digest


def _at(value: str | None) -> datetime | None:
    return clock.parse(value) if value else None


def succeeded_fields(record: BuildRecord, digest: str, what: str) -> dict[str, Any]:
    """The keyword arguments of ``Transitions.move`` that settle ``record`` as SUCCEEDED
    although ``what`` (the instance's failure, or its silence) said otherwise."""
    tags = ", ".join(record.image.tags)
    return {
        "message": (f"{what}; but ECR holds every tag ({tags}) at {digest}, pushed by this attempt "
                    "after its GPU test passed: the build succeeded")[:2000],
        "fields": {"image.digest": digest, "ecr_digest": digest},
        "remove": ["token_hash", "reason"],
    }


def settle(transitions, record: BuildRecord, digest: str, what: str, *,
           extra_condition: ConditionBase | None = None) -> BuildRecord:
    """Move a RUNNING build that pushed ``digest`` to SUCCEEDED with the note. Raises
    InvalidTransition when it moved on meanwhile (the caller treats that as a lost race)."""
    log.warning("build %s: %s, but its image is in ECR at %s: SUCCEEDED", record.id, what, digest)
    return transitions.move(record.id, Status.SUCCEEDED, expect=[Status.RUNNING],
                            extra_condition=extra_condition, **succeeded_fields(record, digest, what))
