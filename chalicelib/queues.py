"""The SQS queues between the API, the launcher and the notifier."""

from __future__ import annotations

import json


class Queue:
    def __init__(self, client, url: str) -> None:
        self._sqs = client
        self.url = url

    def send(self, body: dict, *, delay_seconds: int = 0) -> None:
        self._sqs.send_message(
            QueueUrl=self.url,
            MessageBody=json.dumps(body, sort_keys=True),
            DelaySeconds=max(0, min(900, int(delay_seconds))),
        )
