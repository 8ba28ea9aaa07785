"""Concurrent submits all touch the quota item, and DynamoDB cancels all but one of the
transactions with TransactionConflict: a submit retries those, then answers 503."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from chalicelib import wiring


class Conflicting:
    """A DynamoDB client whose next ``conflicts`` transactions are cancelled as DynamoDB
    cancels concurrent ones on the same item."""

    def __init__(self, client, conflicts: int) -> None:
        self._client = client
        self.conflicts = conflicts
        self.calls = 0

    def transact_write_items(self, **kwargs):
        self.calls += 1
        if self.conflicts > 0:
            self.conflicts -= 1
            raise ClientError({
                "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
                "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
            }, "TransactWriteItems")
        return self._client.transact_write_items(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _submit(api):
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"},
                         body=json.dumps({"framework": "canary"}))
    return resp.status_code, resp.headers, json.loads(resp.body)


def test_a_conflict_with_a_concurrent_submit_is_retried(api, aws):
    store = wiring.store()
    store._db = Conflicting(store._db, conflicts=2)
    status, _, build = _submit(api)
    assert status == 202
    assert store._db.calls == 3
    assert build["id"] in store.slot_holders()


def test_conflicts_that_outlast_the_retries_are_a_503_to_retry(api, aws):
    store = wiring.store()
    store._db = Conflicting(store._db, conflicts=100)
    status, headers, err = _submit(api)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert "retry" in err["Message"]
    assert [i for i in aws.items() if i.get("kind") == "build"] == []
    assert aws.messages("LaunchQueue") == []
