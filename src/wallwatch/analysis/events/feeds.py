"""An Atom 1.0 feed (RFC 4287) of the event lifecycle log, for newsrooms and feed readers.

One feed entry per log entry (`opened`, `network_joined`,
`network_comprehensive`, `extended`, `closed`: `lifecycle.lifecycle_entries`),
built from the append-only
`events.jsonl` alone, so the feed is a pure function of the log: re-running on
the same log gives the same bytes (no "now", no random ids, fixed attribute
order). A feed reader that has seen an entry never sees it change.

Ids are tag URIs (RFC 4151) from the event id and the entry kind, plus what
makes the entry unique within its event (the network that joined, the new
end), e.g. `tag:wallwatch.invalid,2025:event/3f0c.../network_joined/AS4134`.
The authority must be a domain (or e-mail) the publisher owns; the default
uses the reserved `.invalid` TLD (RFC 2606) so that nobody's domain is
claimed by accident. Publishers pass their own (`--tag-authority`).
`updated` is when the entry was logged (`logged_at`): the moment wallwatch
knew, which is what a reader of an alert wants; the event's own times are in
the title and content.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wallwatch import __version__
from wallwatch.analysis.events.grouping import describe_extent
from wallwatch.vocabulary import Throttling

# A throttling event's kinds in words a reader can print (the vocabulary's own).
_THROTTLING_WORDS = {kind.value: kind.plain for kind in Throttling}

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"
DEFAULT_TAG_AUTHORITY = "wallwatch.invalid,2025"
ENTRY_KINDS = ("opened", "network_joined", "network_comprehensive", "extended", "closed")
_EMPTY_FEED_UPDATED = "1970-01-01T00:00:00Z"  # a feed must have <updated>; an empty log has no time

# How services are written in prose (service ids: docs/storage.md, verdicts.service).
SERVICE_NAMES: Mapping[str, str] = {
    "whatsapp": "WhatsApp",
    "telegram": "Telegram",
    "signal": "Signal",
    "facebook_messenger": "Facebook Messenger",
    "wechat": "WeChat",
    "skype": "Skype",
    "viber": "Viber",
    "facetime": "FaceTime",
    "web": "Web",
    "tor": "Tor",
    "openvpn": "OpenVPN",
    "riseupvpn": "RiseupVPN",
}


class FeedError(ValueError):
    """A feed option that cannot make a valid feed (e.g. a malformed tag authority)."""


@dataclass(frozen=True)
class FeedOptions:
    title: str = "wallwatch: censorship events"
    # "<domain or e-mail>,<date>" (RFC 4151 taggingEntity).
    tag_authority: str = DEFAULT_TAG_AUTHORITY
    # Where the feed will be served (rel="self", RFC 4287 §4.2.7); omitted when unknown.
    self_url: str | None = None
    # Only entries of these countries / services / event types (empty: all).
    countries: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()

    def check(self) -> None:
        entity, _, date = self.tag_authority.partition(",")
        if not entity or not date or ":" in self.tag_authority or " " in self.tag_authority:
            raise FeedError(f"tag authority must look like 'example.org,2025', got {self.tag_authority!r}")


def entry_id(entry: Mapping[str, Any], tag_authority: str = DEFAULT_TAG_AUTHORITY) -> str:
    """The entry's stable tag URI: event id, entry kind, and what is unique to the entry."""
    kind = entry["entry"]
    specific = f"event/{entry['event_id']}/{kind}"
    if kind in ("network_joined", "network_comprehensive"):
        specific += f"/AS{entry.get('probe_asn')}"
    elif kind in ("extended", "closed"):
        # An event can be closed, extended and closed again: each time has its own end.
        specific += f"/{entry.get('end') or 'ongoing'}"
    return f"tag:{tag_authority}:{specific}"


def entry_title(entry: Mapping[str, Any]) -> str:
    """A headline a journalist can read: 'WhatsApp text blocked in CN: AS4134 joined'."""
    event = entry.get("event") or {}
    kind = entry["entry"]
    cc = event.get("probe_cc", "??")
    if event.get("type") == "volume_collapse":
        subject = f"Measurements from {cc} collapsed"
    else:
        service = SERVICE_NAMES.get(event.get("service", ""), event.get("service", "?"))
        feature = event.get("feature", "*")
        subject = f"{service} {'(all features)' if feature == '*' else feature} blocked in {cc}"
    networks = event.get("networks") or []
    if kind == "opened":
        asns = ", ".join(_network(n, with_name=False) for n in networks)
        return f"{subject}: began {_when(entry.get('onset') or event.get('onset'))} ({asns})"
    if kind == "network_joined":
        return f"{subject}: {_network(_entry_network(entry, networks))} joined"
    if kind == "network_comprehensive":
        network = _entry_network(entry, networks)
        return f"{subject}: {_network(network)} comprehensive from {_when(entry.get('at'))} (on and off before)"
    if kind == "extended":
        end = entry.get("end")
        return f"{subject}: resumed, {'ongoing' if end is None else 'until ' + _when(end)}"
    if kind == "closed":
        return f"{subject}: ended {_when(entry.get('end'))}"
    return f"{subject}: {kind}"


# Context lines for one log entry (e.g. the calendar's "19th Party Congress opens (Wed 18 Oct 2017)"),
# from the entry alone so that an entry a reader has seen never changes.
Context = Callable[[Mapping[str, Any]], Sequence[str]]


def atom_feed(log: Iterable[Mapping[str, Any]], options: FeedOptions = FeedOptions(),
              context: Context | None = None) -> bytes:
    """The Atom document for a lifecycle log (in log order), newest entry first; UTF-8 bytes.

    `context(entry)`: lines printed under the entry as context (the server's calendar annotations).
    """
    options.check()
    entries = _selected(log, options)
    ET.register_namespace("", ATOM_NS)
    feed = ET.Element(_q("feed"))
    _text(feed, "id", f"tag:{options.tag_authority}:feed/events{_filter_suffix(options)}")
    _text(feed, "title", options.title)
    _text(feed, "updated", max((_stamp(e) for e in entries), default=_EMPTY_FEED_UPDATED))
    author = ET.SubElement(feed, _q("author"))
    _text(author, "name", "wallwatch")
    generator = _text(feed, "generator", "wallwatch")
    generator.set("version", __version__)
    if options.self_url:
        link = ET.SubElement(feed, _q("link"))
        link.set("rel", "self")
        link.set("type", ATOM_MEDIA_TYPE)
        link.set("href", options.self_url)
    _text(feed, "subtitle", "Censorship events detected in OONI-format measurements: each entry is a change "
                            "in an event's lifecycle (opened, network joined, extended, closed). Times in UTC.")
    for entry in entries:
        feed.append(_entry(entry, options, context(entry) if context else ()))
    ET.indent(feed, space="  ")
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True) + b"\n"


def _selected(log: Iterable[Mapping[str, Any]], options: FeedOptions) -> list[Mapping[str, Any]]:
    """Well-formed entries matching the filters, one per id, newest first (log order breaks ties)."""
    seen: set[str] = set()
    kept: list[tuple[str, int, Mapping[str, Any]]] = []
    for index, entry in enumerate(log):
        event = entry.get("event")
        if entry.get("entry") not in ENTRY_KINDS or not entry.get("event_id") or not isinstance(event, Mapping):
            continue  # a damaged line loses only itself
        if options.countries and event.get("probe_cc") not in options.countries:
            continue
        if options.services and event.get("service") not in options.services:
            continue
        if options.event_types and event.get("type") not in options.event_types:
            continue
        identity = entry_id(entry, options.tag_authority)
        if identity in seen:
            continue
        seen.add(identity)
        kept.append((_stamp(entry), index, entry))
    kept.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [entry for _, _, entry in kept]


def _entry(entry: Mapping[str, Any], options: FeedOptions, context: Sequence[str] = ()) -> ET.Element:
    event = entry["event"]
    element = ET.Element(_q("entry"))
    _text(element, "id", entry_id(entry, options.tag_authority))
    _text(element, "title", entry_title(entry))
    _text(element, "updated", _stamp(entry))
    _text(element, "published", _stamp(entry))
    for term in (entry["entry"], event.get("type"), event.get("probe_cc"), event.get("service")):
        if term:
            ET.SubElement(element, _q("category")).set("term", str(term))
    _text(element, "summary", _summary(entry))
    content = _text(element, "content", _content_html(entry, context))
    content.set("type", "html")
    return element


def _summary(entry: Mapping[str, Any]) -> str:
    event = entry["event"]
    networks = event.get("networks") or []
    methods = ", ".join(event.get("method") or []) or "no method recorded"
    end = event.get("end")
    span = f"from {_when(event.get('onset'))} " + ("(ongoing)" if end is None else f"to {_when(end)}")
    if event.get("type") == "volume_collapse":
        return f"Measurements stopped arriving {span} on {len(networks)} network(s): " \
               f"{', '.join(_network(n) for n in networks)}. Not by itself evidence of blocking."
    evidence = event.get("evidence") or {}
    share = event.get("peak_blocked_share")
    if event.get("type") == "throttling":
        kinds = ", ".join(f"{kind} ({_THROTTLING_WORDS.get(kind, kind)})" for kind in event.get("method") or [])
        return (f"Slowed down (throttled, still reachable) {span} on {len(networks)} network(s): "
                f"{', '.join(_network(n) for n in networks)}. How: {kinds or 'not recorded'}. "
                f"{evidence.get('n_throttled_measurements', 0)} of {evidence.get('n_measurements', 0)} "
                "measurements throttled"
                + (f", at most {share:.0%} of probes in an hour." if isinstance(share, int | float) else "."))
    return (f"Blocked {span} on {len(networks)} network(s): {', '.join(_network(n) for n in networks)}. "
            f"Method: {methods}. {evidence.get('n_blocked_measurements', 0)} of "
            f"{evidence.get('n_measurements', 0)} measurements blocked"
            + (f", at most {share:.0%} of probes in an hour." if isinstance(share, int | float) else "."))


def _content_html(entry: Mapping[str, Any], context: Sequence[str] = ()) -> str:
    event = entry["event"]
    evidence = event.get("evidence") or {}
    e = html.escape
    rows = [f"<p>{e(_summary(entry))}</p>", "<ul>"]
    for network in event.get("networks") or []:
        end = network.get("end")
        periods = network.get("periods") or []
        rows.append(f"<li>{e(_network(network))}: from {e(_when(network.get('onset')))}"
                    + (", ongoing" if end is None else f" to {e(_when(end))}")
                    + (f" ({len(periods)} on/off periods)" if len(periods) > 1 else "")
                    + e(_on_and_off(network)) + "</li>")
    rows.append("</ul>")
    methods = event.get("methods") or {}
    if methods:
        what = "Kinds (throttled measurements)" if event.get("type") == "throttling" else "Methods (blocked measurements)"
        rows.append(f"<p>{what}: "
                    + ", ".join(f"{e(m)} ({int(c)})" for m, c in methods.items()) + "</p>")
    if evidence.get("rule_ids"):
        rows.append("<p>Verdict rules: " + ", ".join(f"<code>{e(str(r))}</code>" for r in evidence["rule_ids"])
                    + "</p>")
    if evidence.get("example_measurement_uids"):
        rows.append("<p>Example measurements: "
                    + ", ".join(f"<code>{e(str(u))}</code>" for u in evidence["example_measurement_uids"]) + "</p>")
    if evidence.get("closed_by_silence"):
        rows.append("<p>Measurements from " + ", ".join(f"AS{int(a)}" for a in evidence["closed_by_silence"])
                    + " stopped for weeks: the end shown is the end of the evidence, not an observed unblocking.</p>")
    if context:
        rows.append("<p>Context: " + "; ".join(e(line) for line in context) + "</p>")
    rows.append(f"<p>Event <code>{e(str(entry['event_id']))}</code>, lifecycle entry {e(entry['entry'])}, "
                f"detector {e(str(event.get('detector_version', '?')))}, logged {e(_when(entry.get('logged_at')))}."
                "</p>")
    return "\n".join(rows)


def _entry_network(entry: Mapping[str, Any], networks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The event's network the entry names (`probe_asn`), with its name when the snapshot has it."""
    asn = entry.get("probe_asn")
    return next((n for n in networks if n.get("probe_asn") == asn), {"probe_asn": asn})


def _on_and_off(network: Mapping[str, Any]) -> str:
    if network.get("blocked_share_of_measurements") is None and not network.get("on_and_off"):
        return ""  # a volume collapse, or a snapshot logged before extents existed
    return "; " + describe_extent(network)


def _network(network: Mapping[str, Any], with_name: bool = True) -> str:
    name = network.get("probe_network_name")
    return f"AS{network.get('probe_asn')}" + (f" {name}" if name and with_name else "")


def _when(text: str | None) -> str:
    if not text:
        return "an unknown time"
    moment = datetime.fromisoformat(text.rstrip("Z"))
    return moment.strftime("%a %d %b %Y %H:%M UTC")


def _stamp(entry: Mapping[str, Any]) -> str:
    """RFC 3339 date-time of the entry (RFC 4287 §3.3), from `logged_at`."""
    text = entry.get("logged_at") or (entry.get("event") or {}).get("first_alarm") or _EMPTY_FEED_UPDATED
    moment = datetime.fromisoformat(str(text).rstrip("Z"))
    return moment.replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def _filter_suffix(options: FeedOptions) -> str:
    parts = [f"{name}={','.join(sorted(values))}" for name, values in
             (("cc", options.countries), ("service", options.services), ("type", options.event_types)) if values]
    return ("?" + "&".join(parts)) if parts else ""


def _q(name: str) -> str:
    return f"{{{ATOM_NS}}}{name}"


def _text(parent: ET.Element, name: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, _q(name))
    element.text = text
    return element


def write_atom(store: Any, path: Any, options: FeedOptions = FeedOptions()) -> int:
    """Write the feed of `store`'s event log to `path` (only if the bytes changed); return its entry count."""
    from pathlib import Path

    from wallwatch.analysis.events.grouping import EVENT_LOG

    target = Path(path)
    data = atom_feed(store.read_jsonl(EVENT_LOG), options)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != data:
        target.write_bytes(data)
    return data.count(b"<entry>")


__all__: Sequence[str] = ("ATOM_NS", "DEFAULT_TAG_AUTHORITY", "FeedError", "FeedOptions", "atom_feed", "entry_id",
                          "entry_title", "write_atom")
