"""Notifications to people: an SNS topic (the reference's notification stack), or a local stand-in.

`SnsNotifier` publishes to `SNS_TOPIC_ARN`; `LocalNotifier` writes a log line and appends the message to
an append-only JSON-lines file (`DATA_DIR/notifications.jsonl`), and posts it to `NOTIFY_WEBHOOK_URL` when
one is set. Both retry a failed publish with backoff and then raise `NotificationError`, so the caller can
keep the message for the next attempt instead of losing it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
import http.client
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg

from resources.aws_clients import SINGLE_ATTEMPT_TIMEOUTS, aws_client
from resources.credentials import scrub
from resources.settings import DEFAULTS

logger = logging.getLogger(__name__)


class NotificationError(RuntimeError):
    """A message could not be delivered after every attempt."""


class Notifier(dg.ConfigurableResource, ABC):
    attempts: int = 3
    backoff_seconds: float = 0.5

    @abstractmethod
    def _send(self, subject: str, message: str) -> str:
        """Deliver once; returns a message id."""

    @abstractmethod
    def describe(self) -> str: ...

    def publish(self, subject: str, message: str) -> str:
        """Deliver `message`, retrying; `NotificationError` when every attempt failed."""
        last = None
        for attempt in range(self.attempts):
            try:
                return self._send(subject, message)
            except Exception as exc:  # every transport has its own errors; all are retried the same way
                last = exc
                if attempt + 1 < self.attempts:
                    time.sleep(self.backoff_seconds * 2**attempt)
        raise NotificationError(f"could not notify through {self.describe()} after {self.attempts} attempts: "
                                f"{self._failure(last)}")

    def _failure(self, exc: Exception) -> str:
        """What went wrong, safe to log."""
        return f"{type(exc).__name__}: {exc}"


class SnsNotifier(Notifier):
    """An SNS topic; subscribers (e-mail, SQS, Lambda) get every message."""

    topic_arn: str
    region_name: str = DEFAULTS["aws_region"]
    endpoint_url: str | None = None

    def describe(self) -> str:
        return f"SNS topic {self.topic_arn}"

    def _send(self, subject: str, message: str) -> str:
        # short timeouts and no hidden retries (publish retries itself): a tick stays inside the sensor timeout
        client = aws_client("sns", region_name=self.region_name, endpoint_url=self.endpoint_url,
                            **SINGLE_ATTEMPT_TIMEOUTS)
        return client.publish(TopicArn=self.topic_arn, Subject=subject[:100], Message=message)["MessageId"]


class LocalNotifier(Notifier):
    """A log line, an append-only JSON-lines file, and optionally an HTTP webhook."""

    path: str
    webhook_url: str | None = None

    def describe(self) -> str:
        return f"local notifications in {self.path}" + (" and a webhook" if self.webhook_url else "")

    def _failure(self, exc: Exception) -> str:
        """A webhook failure without the webhook's URL: its path or query is often the secret itself."""
        if isinstance(exc, urllib.error.HTTPError):
            return f"the webhook answered HTTP {exc.code}"
        if isinstance(exc, urllib.error.URLError):
            parts = urlsplit(self.webhook_url or "")
            secrets = tuple(part for part in (self.webhook_url, parts.path, parts.query) if part and len(part) > 1)
            return f"the webhook is unreachable: {scrub(str(exc.reason), self.webhook_url, passwords=secrets)}"
        if isinstance(exc, (ValueError, http.client.InvalidURL)):  # urllib's unknown url type, a space
            return f"{type(exc).__name__}: NOTIFY_WEBHOOK_URL is not a usable URL (not shown: it may carry a token)"
        return super()._failure(exc)

    def _send(self, subject: str, message: str) -> str:
        sent_at = datetime.now(timezone.utc).isoformat()
        entry = {"at": sent_at, "subject": subject, "message": message}
        if self.webhook_url:
            request = urllib.request.Request(self.webhook_url, data=json.dumps(entry).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status >= 300:
                    raise NotificationError(f"webhook answered {response.status}")
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(json.dumps(entry) + "\n")
        logger.info("notification: %s", subject)
        return sent_at

    def sent(self) -> list[dict]:
        """Every message written so far (oldest first)."""
        path = Path(self.path)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
