"""GET /builds/{id}/logs while the instance is still starting: a stream that exists but
holds no line yet (the host script creates it first thing) must not hand out a cursor
that the next poll refuses, and the first lines must show up on that next poll."""

from __future__ import annotations

import json
import time

GROUP = "/voltabuild/builds"


def _submit(api) -> str:
    resp = api.http.post("/builds", body=json.dumps({"framework": "canary"}),
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.body
    return json.loads(resp.body)["id"]


def test_an_empty_stream_keeps_the_cursor_and_the_first_lines_arrive_on_the_next_poll(api, aws):
    # GIVEN a build whose instance created its log stream but shipped nothing yet
    build_id = _submit(api)
    logs = aws.client("logs")
    try:
        logs.create_log_group(logGroupName=GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=GROUP, logStreamName=build_id)

    # WHEN a client polls
    first = json.loads(api.http.get(f"/builds/{build_id}/logs").body)
    # THEN no line, and no cursor that points past lines nobody has seen
    assert first["lines"] == [] and first["next"] is None

    # WHEN lines are shipped and the client polls again with what it was given
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=GROUP, logStreamName=build_id,
                        logEvents=[{"timestamp": now + i, "message": f"line {i}"} for i in range(2)])
    query = f"?next={first['next']}" if first["next"] else ""
    second = api.http.get(f"/builds/{build_id}/logs{query}")
    # THEN the first lines are there, with a cursor to continue from
    assert second.status_code == 200, second.body
    page = json.loads(second.body)
    assert [ln["message"] for ln in page["lines"]] == ["line 0", "line 1"]
    assert page["next"]
    third = json.loads(api.http.get(f"/builds/{build_id}/logs?next={page['next']}").body)
    assert third["lines"] == [] and third["next"] == page["next"]
