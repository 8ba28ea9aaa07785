"""The voltabuild HTTP API, as the CLI uses it: retries, errors with the API's own words."""

from __future__ import annotations

import uuid
from typing import Any

import requests

from voltabuild_cli import __version__
from voltabuild_cli.clock import Clock

RETRY_STATUSES = frozenset({502, 503, 504})
# API Gateway (and `chalice local`) answer a path that has no route with this 403.
NO_ROUTE_MESSAGE = "Missing Authentication Token"


class ApiError(Exception):
    """The API answered with an error; ``message`` is the API's own ``Message``."""

    def __init__(self, status: int, code: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.path = path

    @property
    def auth_refused(self) -> bool:
        return self.status in (401, 403) and not self.no_route

    @property
    def no_route(self) -> bool:
        return self.status == 403 and self.message == NO_ROUTE_MESSAGE


class Unreachable(Exception):
    """No answer from the API after the retries."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the voltabuild API at {url}: {reason}")
        self.url = url
        self.reason = reason


def _reason(e: requests.RequestException) -> str:
    if isinstance(e, requests.Timeout):
        return "timed out"
    text = str(e)
    for hint in ("Connection refused", "Name or service not known", "No route to host",
                 "Temporary failure in name resolution", "Connection reset", "Remote end closed"):
        if hint in text:
            return hint.lower()
    return type(e).__name__


class Api:
    """One API endpoint. Idempotent requests (GET, and POST /builds with its
    Idempotency-Key) are retried on connection errors and 502/503/504, with backoff."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        self.url = url.rstrip("/")
        self.clock = clock or Clock()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"voltabuild-cli/{__version__}"
        self.session.headers["Accept"] = "application/json"
        if api_key:
            self.session.headers["x-api-key"] = api_key
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.timeout = timeout

    # ---- transport --------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                headers: dict | None = None, retry: bool = True) -> tuple[int, Any]:
        tries = self.attempts if retry else 1
        last: requests.RequestException | None = None
        resp = None
        for attempt in range(tries):
            if attempt:
                self.clock.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.session.request(method, self.url + path, params=params, json=json,
                                            headers=headers, timeout=self.timeout)
            except requests.RequestException as e:
                last = e
                resp = None
                continue
            if resp.status_code in RETRY_STATUSES and attempt + 1 < tries:
                continue
            break
        if resp is None:
            raise Unreachable(self.url, _reason(last) if last else "no answer")
        body = self._body(resp)
        if resp.status_code >= 400:
            code, message = "Error", f"HTTP {resp.status_code}"
            if isinstance(body, dict):
                code = str(body.get("Code") or code)
                message = str(body.get("Message") or body.get("message") or message)
            elif isinstance(body, str) and body.strip():
                message = f"HTTP {resp.status_code}: {body.strip()[:300]}"
            raise ApiError(resp.status_code, code, message, method=method, path=path)
        return resp.status_code, body

    @staticmethod
    def _body(resp: requests.Response) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    # ---- routes -----------------------------------------------------------------
    def submit(self, body: dict, *, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """POST /builds. The same Idempotency-Key goes with every retry, so a retried
        submit never makes two builds. Returns ``(build, created)``."""
        key = idempotency_key or str(uuid.uuid4())
        status, build = self.request("POST", "/builds", json=body, headers={"Idempotency-Key": key})
        return build, status == 202

    def context_target(self, sha256: str, size: int) -> dict:
        """POST /contexts (issue 20): ``uploaded`` true, or a presigned S3 POST in ``upload``."""
        return self.request("POST", "/contexts", json={"sha256": sha256, "size": size})[1]

    def upload_context(self, post: dict, path, on_read=None) -> None:
        """Send the tarball at ``path`` with the presigned POST ``post`` (url, fields). Straight
        to S3, without this client's API key."""
        from voltabuild_cli.context import MultipartFile

        body = MultipartFile(post["fields"], path, on_read)
        try:
            resp = requests.post(post["url"], data=body, timeout=(self.timeout[0], 3600),
                                 headers={"Content-Type": body.content_type, "Content-Length": str(len(body))})
        except requests.RequestException as e:
            raise Unreachable(post["url"].split("?")[0], _reason(e)) from None
        finally:
            body.close()
        if resp.status_code not in (200, 201, 204):
            raise ApiError(resp.status_code, "UploadRefused", f"the upload was refused: {resp.text.strip()[:300]}",
                           method="POST", path="(presigned upload)")

    def get_build(self, build_id: str) -> dict:
        return self.request("GET", f"/builds/{build_id}")[1]

    def list_builds(self, *, status: str | None = None, framework: str | None = None,
                    limit: int | None = None, cursor: str | None = None) -> dict:
        params = {k: v for k, v in (("status", status), ("framework", framework), ("limit", limit),
                                    ("next", cursor)) if v is not None}
        return self.request("GET", "/builds", params=params)[1]

    def cancel(self, build_id: str) -> tuple[dict, bool]:
        """DELETE /builds/{id}; returns ``(build, done)``. Not retried blindly: a retry
        whose first try went through would read as a 409, so on a connection error the
        build is read back instead."""
        try:
            status, build = self.request("DELETE", f"/builds/{build_id}", retry=False)
        except Unreachable:
            self.clock.sleep(self.backoff_s)
            build = self.get_build(build_id)
            if build.get("status") == "CANCELLED":
                return build, True
            if build.get("cancel_requested"):
                return build, False
            status, build = self.request("DELETE", f"/builds/{build_id}", retry=False)
        return build, status == 200

    def logs(self, build_id: str, cursor: str | None = None, *, limit: int = 1000) -> dict:
        """GET /builds/{id}/logs: ``{"lines": [{"at", "message"}], "next": cursor}``."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["next"] = cursor
        return self.request("GET", f"/builds/{build_id}/logs", params=params)[1]

    # ---- groups and costs (issue 22) ----
    def get_group(self, group_id: str) -> dict:
        return self.request("GET", f"/groups/{group_id}")[1]

    def cancel_group(self, group_id: str) -> tuple[dict, bool]:
        status, group = self.request("DELETE", f"/groups/{group_id}", retry=False)
        return group, status == 200

    def costs(self, *, start: str | None = None, end: str | None = None, by: str | None = None) -> dict:
        params = {k: v for k, v in (("from", start), ("to", end), ("by", by)) if v is not None}
        return self.request("GET", "/costs", params=params)[1]

    def frameworks(self) -> dict:
        return self.request("GET", "/frameworks")[1]
