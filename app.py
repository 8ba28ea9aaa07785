"""voltabuild's Chalice app: routes and event handlers only — the domain is in chalicelib.

Every Lambda function imports this module, so it imports only Chalice and the wiring; each
handler imports the request models and event parsers it uses when it first runs (a cold
start of the API pays for no Slack SDK, the notifier for no matrix models: issue 21).
"""

from __future__ import annotations

from chalice import Chalice

from chalicelib import metrics, observability, wiring
from chalicelib.api.http import error_response, handle_errors, json_response

observability.setup()  # JSON log lines (chalicelib/observability.py); metrics: EMF lines
metrics.configure(stage=wiring.stage())
app = Chalice(app_name="voltabuild", configure_logs=False)  # app.log propagates to the JSON root logger
app.api.binary_types = []  # every body is JSON

OPEN_ROUTES = {"/health", "/builds/{build_id}/events"}


@app.middleware("http")
def observe(event, get_response):
    """Every route's log context; POST /builds refusals counted by status (chalicelib/metrics.py)."""
    observability.bind("api", event.lambda_context, build_id=(event.uri_params or {}).get("build_id"))
    response = get_response(event)
    if event.method == "POST" and event.context.get("resourcePath") == "/builds":
        metrics.refused(response.status_code)
    return response


@app.middleware("http")
def require_api_key(event, get_response):
    """In AWS, API Gateway checks the key (usage plan). Locally, LOCAL_API_KEY does."""
    expected = wiring.settings().local_api_key
    if expected and event.context.get("resourcePath") not in OPEN_ROUTES:
        if not wiring.same_secret(event.headers.get("x-api-key", ""), expected):
            return error_response(403, "missing or wrong API key: send it in the x-api-key header")
    return get_response(event)


def api_key_id(req) -> str:
    """The caller's API key id as API Gateway puts it in the request context (the quotas'
    owner); locally, where LOCAL_API_KEY is the one key, "local"."""
    identity = (req.context or {}).get("identity") or {}
    return identity.get("apiKeyId") or "local"


@app.route("/health", methods=["GET"])
def health():
    return {"status": "ok"}


@app.route("/frameworks", methods=["GET"], api_key_required=True)
def frameworks():
    return wiring.catalog().summary


@app.route("/openapi.json", methods=["GET"], api_key_required=True)
def openapi():
    return wiring.openapi_document()


@app.route("/builds", methods=["POST"], api_key_required=True)
@handle_errors
def submit_build():
    from chalicelib.api.bodies import parse_body
    from chalicelib.builds.groups import has_matrix
    from chalicelib.builds.matrix import MatrixRequest
    from chalicelib.builds.schemas import BuildRequest

    req = app.current_request
    if has_matrix(req.raw_body):  # one build per cell, in a group (issue 22)
        matrix = parse_body(req.raw_body, MatrixRequest)
        group, created = wiring.groups().submit(matrix, idempotency_key=req.headers.get("idempotency-key"),
                                                api_key_id=api_key_id(req))
        if created:
            metrics.emit("BuildsSubmitted", len(group.cells), Framework=group.framework)
        return json_response(group, 202 if created else 200, {"Location": f"/groups/{group.id}"})
    body = parse_body(req.raw_body, BuildRequest)
    build, created = wiring.builds().submit(body, idempotency_key=req.headers.get("idempotency-key"),
                                            api_key_id=api_key_id(req))
    if created:
        observability.bind_build(build.id)
        metrics.emit("BuildsSubmitted", Framework=build.framework)
    return json_response(build, 202 if created else 200, {"Location": f"/builds/{build.id}"})


@app.route("/contexts", methods=["POST"], api_key_required=True)
@handle_errors
def upload_context():
    """An upload target for a build context (issue 20; chalicelib/custom/contexts.py)."""
    from chalicelib.api.bodies import parse_body
    from chalicelib.custom.contexts import ContextRequest

    body = parse_body(app.current_request.raw_body, ContextRequest)
    result = wiring.contexts().request_upload(body)
    return json_response(result, 200 if result.uploaded else 201)


@app.route("/builds", methods=["GET"], api_key_required=True)
@handle_errors
def list_builds():
    from chalicelib.builds.groups import group_filter
    from chalicelib.builds.schemas import BuildList

    q = app.current_request.query_params or {}
    unknown = set(q) - {"status", "framework", "limit", "next", "group"}
    if unknown:
        return error_response(
            400, f"unknown query parameter(s) {sorted(unknown)}; allowed: status, framework, limit, next, group")
    if group_filter(q) is not None:
        return json_response(BuildList(builds=wiring.groups().builds(q["group"]), next=None))
    builds, cursor = wiring.builds().list(
        status=q.get("status"), framework=q.get("framework"), limit=q.get("limit"), cursor=q.get("next")
    )
    return json_response(BuildList(builds=builds, next=cursor))


@app.route("/builds/{build_id}", methods=["GET"], api_key_required=True)
@handle_errors
def get_build(build_id):
    return json_response(wiring.builds().get(build_id))


@app.route("/builds/{build_id}", methods=["DELETE"], api_key_required=True)
@handle_errors
def cancel_build(build_id):
    build, done = wiring.builds().cancel(build_id)
    return json_response(build, 200 if done else 202)


# ---- groups and costs (issue 22) --------------------------------------------
@app.route("/groups/{group_id}", methods=["GET"], api_key_required=True)
@handle_errors
def get_group(group_id):
    return json_response(wiring.groups().get(group_id))


@app.route("/groups/{group_id}", methods=["DELETE"], api_key_required=True)
@handle_errors
def cancel_group(group_id):
    group, done = wiring.groups().cancel(group_id)
    return json_response(group, 200 if done else 202)


@app.route("/costs", methods=["GET"], api_key_required=True)
@handle_errors
def costs():
    from chalicelib.costs.costagg import cost_report

    q = app.current_request.query_params or {}
    unknown = set(q) - {"from", "to", "by"}
    if unknown:
        return error_response(400, f"unknown query parameter(s) {sorted(unknown)}; allowed: from, to, by")
    return json_response(cost_report(wiring.cost_aggregates(), q))


# ---- launcher and the instance's reports ----------------------------------
@app.on_sqs_message(queue=wiring.queue_name("launch"), batch_size=1, name="launcher")
def launcher(event):
    """Launch queue: one build attempt per message; stale and duplicate messages are
    ignored (see chalicelib/launching/launcher.py)."""
    observability.bind("launcher", event.context)
    for record in event:
        wiring.launcher().handle(record.body)


@app.route("/builds/{build_id}/events", methods=["POST"])
@handle_errors
def report_event(build_id):
    """The build instance's reports; authenticated by its per-attempt token, not an API key."""
    req = app.current_request
    result = wiring.reports().receive(build_id, req.headers.get("authorization"), req.raw_body)
    return json_response(result, 202)


@app.route("/builds/{build_id}/logs", methods=["GET"], api_key_required=True)
@handle_errors
def build_logs(build_id):
    q = app.current_request.query_params or {}
    unknown = set(q) - {"next", "limit"}
    if unknown:
        return error_response(400, f"unknown query parameter(s) {sorted(unknown)}; allowed: next, limit")
    return json_response(wiring.build_logs().read(build_id, cursor=q.get("next"), limit=q.get("limit")))


# ---- event-driven lifecycle: EventBridge handlers, reaper -----------------
# Thin: parse the event into a typed wrapper, call one lifecycle function. A malformed
# event is logged and dropped (retrying cannot fix it); everything else is idempotent.
def _lifecycle_event(event, wrapper: str, action: str) -> dict:
    from chalicelib.events import cloud_events

    observability.bind(action, event.context)
    wrapper = getattr(cloud_events, wrapper)
    try:
        ev = wrapper.from_event(event.to_dict())
    except cloud_events.MalformedEvent as e:
        app.log.warning("dropped %s event: %s", wrapper.__name__, e)
        return {"outcome": "malformed"}
    return {"outcome": getattr(wiring.lifecycle(), action)(ev)}


@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"],
                  "detail": {"state": ["running", "stopped", "shutting-down", "terminated"]}},
                 name="on_instance_state")
def on_instance_state(event):
    return _lifecycle_event(event, "InstanceStateChange", "instance_state")


@app.on_cw_event({"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
                 name="on_spot_interruption")
def on_spot_interruption(event):
    return _lifecycle_event(event, "SpotInterruption", "spot_interruption")


@app.on_cw_event({"source": ["aws.ecr"], "detail-type": ["ECR Image Action"],
                  "detail": {"action-type": ["PUSH"], "result": ["SUCCESS"]}},
                 name="on_image_pushed")
def on_image_pushed(event):
    return _lifecycle_event(event, "ImagePushed", "image_pushed")


@app.schedule("rate(5 minutes)", name="reaper")
def reaper(event):
    observability.bind("reaper", event.context)
    return wiring.reaper().tick().summary()



# ---- notifications ------------------------------------------------------


@app.on_sqs_message(queue=wiring.queue_name("notify"), batch_size=1)
def notify_consumer(event):
    """Final build states (and, with NOTIFY_ON_START, starts): quota slot back, one Slack
    message, its delivery recorded on the build. See chalicelib/notifications/notify.py."""
    from chalicelib.notifications.notify_events import parse_event as parse_notify_event

    observability.bind("notify", event.context)
    for record in event:
        message = parse_notify_event(record.body)
        if message is not None:
            observability.bind_build(message.build_id)
            wiring.notifier().handle(message)
