"""Least privilege for build your own (issue 20): the contexts bucket in the template, and
which function may do what with it and with the users' repositories."""

from __future__ import annotations

from functools import cache

from infra.local import load_template
from infra.permissions import function_calls


@cache
def actions() -> dict[str, set[str]]:
    return {fn: {c.action for c in calls} for fn, calls in function_calls().items()}


def test_the_api_signs_uploads_and_checks_contexts_but_cannot_make_repositories():
    api = actions()["APIHandler"]
    assert {"s3:PutObject", "s3:GetObject"} <= api  # presigned POST, HEAD of a named context
    assert "ecr:CreateRepository" not in api


def test_the_launcher_signs_downloads_and_makes_repositories_but_cannot_upload():
    launcher = actions()["Launcher"]
    assert {"s3:GetObject", "ecr:CreateRepository", "ecr:PutLifecyclePolicy"} <= launcher
    assert "s3:PutObject" not in launcher


def test_the_anonymous_reports_function_and_the_builder_role_touch_no_bucket():
    assert not any(a.startswith("s3:") for a in actions()["EventsHandler"])
    role = load_template()["Resources"]["BuilderRole"]["Properties"]
    granted = {a for p in role["Policies"] for s in p["PolicyDocument"]["Statement"] for a in s["Action"]}
    assert not any(a.startswith("s3:") for a in granted)


def test_the_contexts_bucket_is_private_encrypted_tls_only_and_expires():
    res = load_template()["Resources"]
    props = res["ContextsBucket"]["Properties"]
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert all(props["PublicAccessBlockConfiguration"].values()) and len(props["PublicAccessBlockConfiguration"]) == 4
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] == {"Ref": "ContextExpiryDays"}
    # users' uploads expire; the catalog's contexts (catalog/sha256/, issue 19) must not
    assert rule["Prefix"] == "sha256/"
    (deny,) = res["ContextsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(deny["Resource"]) == 2  # the bucket and its objects


def test_the_local_bucket_gets_the_templates_settings(aws):
    s3 = aws.client("s3")
    bucket = aws.resources["ContextsBucket"]
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicAcls"] is True
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Expiration"]["Days"] == 7 and rule["Filter"] == {"Prefix": "sha256/"}
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
