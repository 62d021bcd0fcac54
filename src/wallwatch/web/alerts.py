"""Webhook alerts: one signed JSON POST per lifecycle change of an event, never repeated.

Configured in a YAML file (`wallwatch serve --alerts alerts.yaml`; docs/observatory.md)::

    webhooks:
      - name: newsroom
        url: https://example.org/hooks/wallwatch
        secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw   # or secret_env: NEWSROOM_SECRET
        countries: [CN]              # optional filters: countries, services, entries (lifecycle kinds)
        services: [whatsapp]
        retries: 5                   # tries after the first (default 5)
        backoff_seconds: 1           # 1, 2, 4, 8, 16 s between tries (default 1)
        timeout_seconds: 10
    dead_letter: alerts-dead.jsonl   # optional; default <data>/_live/alerts/dead-letter.jsonl

What is alerted is the append-only event log (`analysis/events/lifecycle.py`): each entry
(`opened`, `network_joined`, `network_comprehensive`, `extended`, `closed`) is one alert, and its
id is the entry's Atom id (`feeds.entry_id`), so the feed and the alerts name a change the same
way. Signing follows Standard Webhooks [StandardWebhooks]: headers `webhook-id` (the alert id:
receivers deduplicate on it), `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`, keyed with the secret, base64-decoded
after a `whsec_` prefix or else taken as UTF-8 bytes).

Never repeated, across restarts too: a delivery (or its dead-lettering after the last try) is
recorded, fsync'd, in `<data>/_live/alerts/state.jsonl` before the next alert of that webhook
is sent, and a recorded alert is never sent again. The one window left is a crash between the
receiver's 2xx and that record: the alert is then sent once more with the same `webhook-id`,
which is why the id is there. A webhook added to an existing data folder starts at the end of
the log (recorded as its `baseline`): it is not sent the folder's history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY, ENTRY_KINDS, entry_id, entry_title

log = logging.getLogger("wallwatch.alerts")

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = "wallwatch-alerts"
# No proxy from the environment (http_proxy, ...): an alert goes to the URL configured, nowhere else.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AlertsConfigError(ValueError):
    """An alerts file that cannot be used; the message names the webhook and the field."""


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    secret: bytes = field(repr=False)
    countries: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF_S
    timeout_seconds: float = DEFAULT_TIMEOUT_S

    def wants(self, entry: Mapping[str, Any]) -> bool:
        event = entry.get("event") or {}
        return ((not self.countries or event.get("probe_cc") in self.countries)
                and (not self.services or event.get("service") in self.services)
                and (not self.entries or entry.get("entry") in self.entries))

    def delays(self) -> list[float]:
        """Seconds to wait before each retry: exponential backoff, doubling from `backoff_seconds`."""
        return [self.backoff_seconds * 2 ** attempt for attempt in range(self.retries)]


@dataclass(frozen=True)
class AlertsConfig:
    webhooks: tuple[Webhook, ...] = ()
    dead_letter: Path | None = None


def load_alerts(path: Path | str) -> AlertsConfig:
    """The webhooks of an alerts YAML file (secrets may come from the environment: `secret_env`)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AlertsConfigError(f"{path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("webhooks", []), list):
        raise AlertsConfigError(f"{path}: expected a mapping with a 'webhooks' list")
    hooks = [_webhook(entry, f"{path}: webhook {index + 1}") for index, entry in enumerate(document.get("webhooks", []))]
    names = [hook.name for hook in hooks]
    if len(set(names)) != len(names):
        raise AlertsConfigError(f"{path}: webhook names must be unique (they key the delivery record)")
    dead_letter = document.get("dead_letter")
    if dead_letter is not None and not isinstance(dead_letter, str):
        raise AlertsConfigError(f"{path}: 'dead_letter' must be a file path")
    return AlertsConfig(tuple(hooks), Path(dead_letter) if dead_letter else None)


def _webhook(entry: Any, where: str) -> Webhook:
    if not isinstance(entry, dict):
        raise AlertsConfigError(f"{where}: expected a mapping")
    known = {"name", "url", "secret", "secret_env", "countries", "services", "entries", "retries",
             "backoff_seconds", "timeout_seconds"}
    if set(entry) - known:
        raise AlertsConfigError(f"{where}: unknown field(s) {sorted(set(entry) - known)}")
    name, url = entry.get("name"), entry.get("url")
    if not isinstance(name, str) or not name.strip():
        raise AlertsConfigError(f"{where}: 'name' must be text")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise AlertsConfigError(f"{where} ({name}): 'url' must be an http:// or https:// URL")
    secret = entry.get("secret")
    if secret is None and entry.get("secret_env"):
        secret = os.environ.get(str(entry["secret_env"]))
        if secret is None:
            raise AlertsConfigError(f"{where} ({name}): environment variable {entry['secret_env']} is not set")
    if not isinstance(secret, str) or len(secret) < 16:
        raise AlertsConfigError(f"{where} ({name}): a 'secret' (or 'secret_env') of at least 16 characters "
                                "is required to sign the alerts")
    entries = tuple(entry.get("entries") or ())
    if not set(entries) <= set(ENTRY_KINDS):
        raise AlertsConfigError(f"{where} ({name}): 'entries' must be among {', '.join(ENTRY_KINDS)}")
    retries, backoff = entry.get("retries", DEFAULT_RETRIES), entry.get("backoff_seconds", DEFAULT_BACKOFF_S)
    timeout = entry.get("timeout_seconds", DEFAULT_TIMEOUT_S)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 20:
        raise AlertsConfigError(f"{where} ({name}): 'retries' must be a whole number from 0 to 20")
    for label, value in (("backoff_seconds", backoff), ("timeout_seconds", timeout)):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise AlertsConfigError(f"{where} ({name}): '{label}' must be a positive number of seconds")
    return Webhook(name.strip(), url, signing_key(secret), _texts(entry.get("countries"), str.upper),
                   _texts(entry.get("services"), str), entries, retries, float(backoff), float(timeout))


def _texts(value: Any, normalise: Callable[[str], str]) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    return tuple(normalise(str(item)) for item in items)


def signing_key(secret: str) -> bytes:
    """Standard Webhooks' `whsec_<base64>` secrets are the base64 of the key; anything else is the key."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            pass
    return secret.encode()


def sign(key: bytes, alert_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body"))."""
    digest = hmac.new(key, f"{alert_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def alert_payload(entry: Mapping[str, Any], alert_id: str, annotations: Sequence[Mapping[str, Any]] = ()) -> bytes:
    """The JSON body of one alert: the lifecycle entry, a headline, the event's snapshot and its context."""
    detail = {k: v for k, v in entry.items() if k not in ("event", "entry", "event_id", "logged_at")}
    return orjson.dumps({
        "alert_id": alert_id,
        "entry": entry.get("entry"),
        "title": entry_title(entry),
        "event_id": entry.get("event_id"),
        "logged_at": entry.get("logged_at"),
        "detail": detail,
        "event": entry.get("event"),
        "annotations": list(annotations),
    })


class DeliveryRecord:
    """`state.jsonl`: per webhook, its baseline and every alert delivered or dead-lettered (fsync'd)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[tuple[str, str]] = set()
        self.baselines: dict[str, int] = {}
        self._lock = threading.Lock()
        if path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line: that alert was not recorded, so it goes again (same id)
                if "baseline" in row:
                    self.baselines.setdefault(row["webhook"], int(row["baseline"]))
                elif "alert_id" in row:
                    self.done.add((row["webhook"], row["alert_id"]))

    def is_done(self, webhook: str, alert_id: str) -> bool:
        return (webhook, alert_id) in self.done

    def set_baseline(self, webhook: str, entries: int) -> None:
        self._append({"webhook": webhook, "baseline": entries, "at": time.time()})
        self.baselines[webhook] = entries

    def record(self, webhook: str, alert_id: str, status: str, attempts: int) -> None:
        self._append({"webhook": webhook, "alert_id": alert_id, "status": status, "attempts": attempts,
                      "at": time.time()})
        self.done.add((webhook, alert_id))

    def _append(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(orjson.dumps(row) + b"\n")
                handle.flush()
                os.fdatasync(handle.fileno())


def append_synced(path: Path, row: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(orjson.dumps(row, default=str) + b"\n")
        handle.flush()
        os.fdatasync(handle.fileno())


@dataclass(frozen=True)
class _Alert:
    alert_id: str
    body: bytes


class Dispatcher:
    """One delivery thread per webhook, each sending its alerts in log order with retries.

    `annotate(event) -> list of annotation records` adds the calendar's context to each alert.
    """

    def __init__(self, config: AlertsConfig, record: DeliveryRecord, dead_letter: Path, *,
                 tag_authority: str = DEFAULT_TAG_AUTHORITY,
                 annotate: Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]] | None = None,
                 on_sent: Callable[[str, str, int], None] | None = None) -> None:
        self.config = config
        self.record = record
        self.dead_letter = config.dead_letter or dead_letter
        self.tag_authority = tag_authority
        self.annotate = annotate
        self.on_sent = on_sent
        self._stop = threading.Event()
        self._queues: dict[str, queue.Queue[_Alert | None]] = {h.name: queue.Queue() for h in config.webhooks}
        self._queued: set[tuple[str, str]] = set()
        self._threads: list[threading.Thread] = []

    def start(self, log: Sequence[Mapping[str, Any]]) -> None:
        """Set the baseline of new webhooks at the log's end, queue what earlier runs left unsent, start."""
        for hook in self.config.webhooks:
            if hook.name not in self.record.baselines:
                self.record.set_baseline(hook.name, len(log))
        for hook in self.config.webhooks:
            self._queue_for(hook, log[self.record.baselines[hook.name]:])
        for hook in self.config.webhooks:
            thread = threading.Thread(target=self._deliver_loop, args=(hook,), name=f"alerts-{hook.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Queue new lifecycle entries for every webhook that wants them."""
        entries = list(entries)
        for hook in self.config.webhooks:
            self._queue_for(hook, entries)

    def _queue_for(self, hook: Webhook, entries: Iterable[Mapping[str, Any]]) -> None:
        for entry in entries:
            if entry.get("entry") not in ENTRY_KINDS or not isinstance(entry.get("event"), Mapping):
                continue
            alert_id = entry_id(entry, self.tag_authority)
            key = (hook.name, alert_id)
            if not hook.wants(entry) or key in self._queued or self.record.is_done(*key):
                continue
            self._queued.add(key)
            annotations = self.annotate(entry["event"]) if self.annotate else ()
            self._queues[hook.name].put(_Alert(alert_id, alert_payload(entry, alert_id, annotations)))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for name in self._queues:
            self._queues[name].put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    def _deliver_loop(self, hook: Webhook) -> None:
        inbox = self._queues[hook.name]
        while not self._stop.is_set():
            alert = inbox.get()
            if alert is None:
                return
            self._deliver(hook, alert)

    def _deliver(self, hook: Webhook, alert: _Alert) -> None:
        delays = hook.delays()
        error = ""
        for attempt in range(len(delays) + 1):
            if attempt:
                if self._stop.wait(delays[attempt - 1]):
                    return  # stopping: not recorded, so the next start sends it (same id)
            ok, error = post_alert(hook, alert.alert_id, alert.body)
            if ok:
                self.record.record(hook.name, alert.alert_id, "delivered", attempt + 1)
                self._queued.discard((hook.name, alert.alert_id))
                if self.on_sent:
                    self.on_sent(hook.name, alert.alert_id, attempt + 1)
                return
            log.warning("alert %s to %s failed (try %d of %d): %s", alert.alert_id, hook.name, attempt + 1,
                        len(delays) + 1, error)
        append_synced(self.dead_letter, {"webhook": hook.name, "url": hook.url, "alert_id": alert.alert_id,
                                         "attempts": len(delays) + 1, "last_error": error, "at": time.time(),
                                         "payload": orjson.loads(alert.body)})
        self.record.record(hook.name, alert.alert_id, "dead_letter", len(delays) + 1)
        self._queued.discard((hook.name, alert.alert_id))


def post_alert(hook: Webhook, alert_id: str, body: bytes) -> tuple[bool, str]:
    """One signed POST; (delivered, the error otherwise). Delivered means a 2xx answer."""
    timestamp = int(time.time())
    request = urllib.request.Request(hook.url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": alert_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(hook.secret, alert_id, timestamp, body),
    })
    try:
        with _OPENER.open(request, timeout=hook.timeout_seconds) as response:
            response.read()
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{exc.__class__.__name__}: {exc}"
