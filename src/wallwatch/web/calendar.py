"""Annotations: dated context from a calendar file, shown beside the events they help explain.

A censorship event rarely comes out of nowhere: WhatsApp's blocking in China in September 2017
ran up to the 19th Party Congress, which opened on 18 October 2017 [Congress2017]. A calendar
file lists such dates, and the API, the Atom feed, the alerts and the dashboard carry them next
to the events of the same country within `window_days` (format: docs/observatory.md)::

    annotations:
      - date: 2017-10-18
        title: 19th Party Congress opens
        countries: [CN]            # optional; none = every country
        end: 2017-10-24            # optional, inclusive
        url: https://example.org/  # optional: where the date comes from
        window_days: 45            # optional; default 30

`load_calendar(path)` is what the dashboard calls (`app.state.calendar` holds the result).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_WINDOW_DAYS = 30
_CC = re.compile(r"^[A-Z]{2}$")


class CalendarError(ValueError):
    """A calendar file that cannot be read; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class Annotation:
    date: dt.date
    title: str
    countries: tuple[str, ...] = ()  # empty: every country
    end: dt.date | None = None  # inclusive
    url: str | None = None
    window_days: int = DEFAULT_WINDOW_DAYS

    @property
    def last(self) -> dt.date:
        return self.end or self.date

    def applies_to(self, probe_cc: str) -> bool:
        return not self.countries or probe_cc in self.countries

    def near(self, start: dt.date, end: dt.date | None) -> bool:
        """Whether this annotation falls within `window_days` of the span start..end (None: ongoing)."""
        slack = dt.timedelta(days=self.window_days)
        return self.date <= (end or dt.date.max - slack) + slack and start - slack <= self.last

    def to_record(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "end": self.end.isoformat() if self.end else None,
                "title": self.title, "countries": list(self.countries), "url": self.url}

    def label(self) -> str:
        """'19th Party Congress opens (Wed 18 Oct 2017)'."""
        when = self.date.strftime("%a %d %b %Y")
        if self.end and self.end != self.date:
            when += " to " + self.end.strftime("%a %d %b %Y")
        return f"{self.title} ({when})"


def load_calendar(path: Path | str) -> list[Annotation]:
    """The annotations of a calendar YAML file, by date."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CalendarError(f"{path}: {exc}") from None
    entries = (document or {}).get("annotations") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CalendarError(f"{path}: expected a mapping with an 'annotations' list")
    return sorted((_annotation(entry, f"{path}: annotation {index + 1}") for index, entry in enumerate(entries)),
                  key=lambda a: (a.date, a.title))


def _annotation(entry: Any, where: str) -> Annotation:
    if not isinstance(entry, dict):
        raise CalendarError(f"{where}: expected a mapping")
    unknown = set(entry) - {"date", "title", "countries", "end", "url", "window_days"}
    if unknown:
        raise CalendarError(f"{where}: unknown field(s) {sorted(unknown)}")
    title = entry.get("title")
    if not isinstance(title, str) or not title.strip():
        raise CalendarError(f"{where}: 'title' must be text")
    date = _date(entry.get("date"), f"{where}: 'date'")
    end = _date(entry["end"], f"{where}: 'end'") if entry.get("end") is not None else None
    if end is not None and end < date:
        raise CalendarError(f"{where}: 'end' {end} is before 'date' {date}")
    countries = entry.get("countries") or []
    if isinstance(countries, str):
        countries = [countries]
    if not isinstance(countries, list) or not all(isinstance(c, str) and _CC.match(c) for c in countries):
        raise CalendarError(f"{where}: 'countries' must be a list of two-letter upper-case codes")
    window = entry.get("window_days", DEFAULT_WINDOW_DAYS)
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise CalendarError(f"{where}: 'window_days' must be a whole number of days >= 0")
    url = entry.get("url")
    if url is not None and not isinstance(url, str):
        raise CalendarError(f"{where}: 'url' must be text")
    return Annotation(date, title.strip(), tuple(countries), end, url, window)


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise CalendarError(f"{where} must be a date, YYYY-MM-DD (got {value!r})")


def annotations_for(event: Mapping[str, Any], annotations: Iterable[Annotation]) -> list[Annotation]:
    """The annotations beside one event (an event record or lifecycle snapshot): same country, near its span."""
    onset = _day(event.get("onset"))
    if onset is None:
        return []
    end = _day(event.get("end"))
    cc = str(event.get("probe_cc") or "")
    return [a for a in annotations if a.applies_to(cc) and a.near(onset, end)]


def _day(text: Any) -> dt.date | None:
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def notes_by_event(events: Sequence[Mapping[str, Any]], annotations: Sequence[Annotation]) -> dict[str, list[str]]:
    """event_id -> the labels of its annotations (what the Atom feed prints as context)."""
    notes: dict[str, list[str]] = {}
    for event in events:
        labels = [a.label() for a in annotations_for(event, annotations)]
        if labels and event.get("event_id"):
            notes[str(event["event_id"])] = labels
    return notes
