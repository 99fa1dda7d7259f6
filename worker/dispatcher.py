"""`sdedit dispatcher`: delivers webhook messages from Redis, signed, with retries; expires
batches past their window.

Each round claims the messages that are due (jobs.webhooks: a claim is a lease, so several
dispatchers can run and one that dies mid-attempt leaves its messages to be retried), sends them
concurrently and records every attempt. Outcomes:

- 2xx: delivered.
- 410 Gone: the receiver wants no more; stop.
- timeout, connection error, 408, 429, 5xx: retry on the exponential schedule with jitter
  (SDEDIT_WEBHOOK_RETRY_SCHEDULE_S), or after the receiver's Retry-After; failed when spent.
- anything else (3xx, other 4xx): failed. Redirects are never followed.

The URL is resolved again before every attempt and the request goes to the address that was
checked (SSRF: no DNS rebinding to a private address after the API accepted the URL). No torch.
"""

from __future__ import annotations

import email.utils
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis import Redis

from jobs.connection import OUTAGE
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.webhooks import (
    Attempt,
    Message,
    UrlRefused,
    resolve_webhook_url,
    retry_delay,
    signature_header,
)

log = logging.getLogger("sdedit.dispatcher")
LEASE_MARGIN_S = 5.0  # a claim outlives the attempt's timeout by this much
MAX_RETRY_AFTER_S = 86400.0
USER_AGENT = "sdedit-webhooks/1"


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL rewritten to a checked address, with the Host header (and TLS server name) of
    the original host, so the request cannot reach an address that was not checked."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), {"host": host_header}, extensions


class Dispatcher:
    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.settings = settings
        self.queue = JobQueue(connection, settings)
        self.store = self.queue.webhooks
        self.http = httpx.Client(follow_redirects=False, timeout=settings.webhook_timeout_s,
                                 headers={"user-agent": USER_AGENT})
        self.pool = ThreadPoolExecutor(settings.dispatcher_concurrency,
                                       thread_name_prefix="delivery")
        self.stopping = threading.Event()

    def close(self) -> None:
        self.pool.shutdown()
        self.http.close()

    def run(self) -> None:
        """Deliver until stop() (a round in flight finishes first)."""
        log.info("dispatcher: delivering webhooks (%d at a time)",
                 self.settings.dispatcher_concurrency)
        while not self.stopping.is_set():
            try:
                busy = self.run_once()
            except OUTAGE as exc:  # Redis down or restarting: the messages wait there
                log.warning("Redis unreachable (%s); retrying", exc)
                busy = 0
            if not busy:
                self.stopping.wait(self.settings.dispatcher_poll_s)

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def run_once(self) -> int:
        """One round: overdue batches expire, due messages are sent (concurrently); returns how
        many messages were sent."""
        self.queue.expire_batches()
        ids = self.store.claim_due(self.settings.dispatcher_concurrency,
                                   self.settings.webhook_timeout_s + LEASE_MARGIN_S)
        list(self.pool.map(self.deliver, ids))
        return len(ids)

    def deliver(self, message_id: str) -> None:
        message = self.store.message(message_id)
        if message is None or message.state != "pending":
            return
        start = time.time()
        try:
            addresses = resolve_webhook_url(message.url, self.settings.webhook_allow_hosts)
        except UrlRefused as exc:
            self._record(message, Attempt(start, None, str(exc), 0.0), "refused")
            return
        timestamp = int(time.time())  # fresh on every attempt; the id stays the same
        url, headers, extensions = pinned(message.url, addresses[0])
        headers |= {
            "content-type": "application/json",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(self.store.signing_secrets(message.owner),
                                                  message.id, timestamp, message.body)}
        status, error, retry_after = None, None, None
        try:
            response = self.http.post(url, content=message.body.encode(), headers=headers,
                                      extensions=extensions)
            status = response.status_code
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        except httpx.TimeoutException:
            error = f"timed out after {self.settings.webhook_timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempt = Attempt(start, status, error, (time.time() - start) * 1000)
        if status is not None and 200 <= status < 300:
            self._record(message, attempt, "delivered")
        elif status == 410:
            self._record(message, attempt, "gone")
        elif status is None or status in (408, 429) or status >= 500:
            if retry_after is not None:  # honoured, up to a day (messages outlive that)
                retry_after = min(retry_after, MAX_RETRY_AFTER_S)
            delay = retry_delay(message.attempts + 1, self.settings.webhook_retry_schedule_s,
                                self.settings.webhook_jitter, retry_after)
            if delay is None:
                self._record(message, attempt, "failed")
            else:
                self._record(message, attempt, "pending", time.time() + delay)
        else:
            self._record(message, attempt, "failed")

    def _record(self, message: Message, attempt: Attempt, state: str,
                next_at: float | None = None) -> None:
        self.store.record_attempt(message, attempt, state, next_at)
        log.info("webhook %s (%s) attempt %d to %s: %s -> %s", message.id, message.type,
                 message.attempts + 1, message.url, attempt.status_code or attempt.error, state)


def run_dispatcher(settings: Settings, connection: Redis) -> None:
    dispatcher = Dispatcher(connection, settings)
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, dispatcher.stop)
        dispatcher.run()
    finally:
        dispatcher.close()
