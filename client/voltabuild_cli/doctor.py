"""``voltabuild doctor``: is this client set up, does the API answer, and — with AWS
credentials — is the stage's deployment healthy? Each check says what is wrong and how
to fix it. The AWS checks read the stage's alarms (``voltabuild-<stage>-*``, made by
infra/operations.py), its queues' depths and its Slack webhook parameters; they need
boto3 (``pip install 'voltabuild[aws]'``), and never print a secret.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from voltabuild_cli.api import Api, ApiError, Unreachable
from voltabuild_cli.config import Config

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
README = "README, Operating voltabuild"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:>4}] {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix else "")


def api_checks(cfg: Config, make_api) -> list[Check]:
    """The client's settings, the API's health, the key and the catalog."""
    out: list[Check] = []
    if not cfg.api_url:
        return [Check("API URL", FAIL, "not set",
                      "set VOLTABUILD_API_URL (or --api-url, or api_url in the config file), or start the "
                      "local stack with `make up` in a voltabuild checkout")]
    out.append(Check("API URL", OK, f"{cfg.api_url} (from {cfg.sources.get('api_url')})"))
    api: Api = make_api()
    try:
        _, body = api.request("GET", "/health", retry=False)
    except Unreachable as e:
        return [*out, Check("API health", FAIL, str(e),
                            "check the URL (scripts/deploy.sh prints the stack's EndpointURL), your network, "
                            "or start the local stack with `make up`")]
    except ApiError as e:
        return [*out, Check("API health", FAIL, f"GET /health answered {e.status}: {e.message}",
                            "the URL must be the API's stage URL, ending in /api")]
    healthy = isinstance(body, dict) and body.get("status") == "ok"
    out.append(Check("API health", OK if healthy else FAIL, f"GET /health answered {body!r}",
                     "" if healthy else "this URL does not serve voltabuild: check VOLTABUILD_API_URL"))
    if not cfg.api_key:
        return [*out, Check("API key", FAIL, "not set",
                            "set VOLTABUILD_API_KEY; the deployment's key: aws apigateway get-api-key "
                            "--api-key <the stack's ApiKeyId output> --include-value")]
    try:
        catalog = api.frameworks()
    except ApiError as e:
        if e.auth_refused:
            return [*out, Check("API key", FAIL, f"refused ({e.status}: {e.message})",
                                f"the key from {cfg.sources.get('api_key')} is not one of this API's: "
                                "set VOLTABUILD_API_KEY to a key on the stage's usage plan")]
        return [*out, Check("catalog", FAIL, f"GET /frameworks answered {e.status}: {e.message}",
                            "see the API function's logs (CloudWatch Logs Insights, function = api)")]
    except Unreachable as e:
        return [*out, Check("catalog", FAIL, str(e), "the API stopped answering: try again, then see its logs")]
    out.append(Check("API key", OK, f"accepted (from {cfg.sources.get('api_key')})"))
    names = [f.get("framework") for f in (catalog or {}).get("frameworks", [])]
    empty = [f.get("framework") for f in (catalog or {}).get("frameworks", []) if not f.get("versions")]
    if not names or empty:
        out.append(Check("catalog", FAIL, f"frameworks {names}; without versions: {empty}",
                         "the deployment's buildspecs/ are missing or broken: package and deploy again"))
    else:
        out.append(Check("catalog", OK, f"{len(names)} frameworks: {', '.join(names)}"))
    return out


def _aws_session():
    try:
        import boto3
    except ImportError:
        return None, Check("AWS", SKIP, "boto3 is not installed", "pip install 'voltabuild[aws]' for the AWS checks")
    session = boto3.session.Session()
    if session.get_credentials() is None:
        return None, Check("AWS", SKIP, "no AWS credentials: alarms, queues and Slack parameters not checked",
                           "set AWS_PROFILE (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and AWS_REGION")
    if not session.region_name:
        return None, Check("AWS", FAIL, "no AWS region", "set AWS_REGION (or AWS_DEFAULT_REGION) to the stack's")
    return session, None


def aws_checks(stage: str, session: Any = None) -> list[Check]:
    """The stage's alarms, queues and Slack parameters (``session``: a boto3 session)."""
    if session is None:
        session, skipped = _aws_session()
        if skipped:
            return [skipped]
    from botocore.exceptions import BotoCoreError, ClientError

    out: list[Check] = []
    for check in (_alarms, _queues, _slack):
        try:
            out.extend(check(session, stage))
        except (ClientError, BotoCoreError) as e:
            out.append(Check(check.__name__.strip("_"), FAIL, f"{type(e).__name__}: {e}",
                             "check the credentials' permissions and region (the stack's account and region)"))
    return out


def _alarms(session, stage: str) -> list[Check]:
    cw = session.client("cloudwatch")
    prefix = f"voltabuild-{stage}-"
    alarms = [a for page in cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
              for a in page["MetricAlarms"]]
    if not alarms:
        return [Check("alarms", WARN, f"no alarm named {prefix}* in {session.region_name}",
                      "deploy with `make deploy STAGE=" + stage + "` (the local stack has no alarms)")]
    firing = [a for a in alarms if a["StateValue"] == "ALARM"]
    out = [Check("alarms", OK if not firing else FAIL,
                 f"{len(alarms)} alarms, {len(firing)} in ALARM, "
                 f"{sum(a['StateValue'] == 'INSUFFICIENT_DATA' for a in alarms)} with insufficient data")]
    for a in firing:
        out.append(Check(f"alarm {a['AlarmName'][len(prefix):]}", FAIL, a.get("AlarmDescription") or "in ALARM",
                         f"{README}: what this alarm means and what to do"))
    return out


def _queues(session, stage: str) -> list[Check]:
    sqs = session.client("sqs")
    out = []
    for kind in ("launch", "notify"):
        for name, dlq in ((f"voltabuild-{stage}-{kind}", False), (f"voltabuild-{stage}-{kind}-dlq", True)):
            try:
                url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            except sqs.exceptions.QueueDoesNotExist:
                out.append(Check(f"queue {name}", FAIL, "does not exist", f"deploy the stage: make deploy STAGE={stage}"))
                continue
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "QueueArn"])["Attributes"]
            waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
            in_flight = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
            detail = f"{waiting} waiting, {in_flight} in flight"
            if dlq and waiting:
                out.append(Check(f"queue {name}", FAIL, detail + " (messages that failed every retry)",
                                 f"read them (aws sqs receive-message --queue-url {url}), fix the cause (the "
                                 f"{kind} function's logs), then move them back: aws sqs start-message-move-task "
                                 f"--source-arn {attrs.get('QueueArn')}"))
            else:
                out.append(Check(f"queue {name}", OK, detail))
    return out


def _slack(session, stage: str) -> list[Check]:
    ssm = session.client("ssm")
    path = f"/voltabuild/{stage}/slack/"
    params = [p for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, WithDecryption=True)
              for p in page["Parameters"]]
    put = (f"aws ssm put-parameter --name {path}default --type SecureString --overwrite "
           "--value https://hooks.slack.com/services/...")
    if not params:
        return [Check("Slack", FAIL, f"no webhook parameter under {path}", put)]
    out = []
    for p in params:
        channel = p["Name"][len(path):]
        value = p.get("Value", "")  # the webhook URL is a secret: never printed
        if value.startswith("https://hooks.slack.com/"):
            out.append(Check(f"Slack {channel}", OK, "a Slack incoming-webhook URL is set"))
        elif value.startswith(("http://127.0.0.1", "http://localhost")):
            out.append(Check(f"Slack {channel}", OK, "the local stack's webhook sink"))
        elif value in ("", "unset"):
            out.append(Check(f"Slack {channel}", FAIL, "no webhook URL set yet: build messages are not sent",
                             put.replace(f"{path}default", p["Name"])))
        else:
            out.append(Check(f"Slack {channel}", WARN, "the value is not a Slack incoming-webhook URL "
                             "(https://hooks.slack.com/...)", put.replace(f"{path}default", p["Name"])))
    return out


def report(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}
