"""The dashboard's HTTP routes: server-rendered pages, their downloads, and the static files.

Every page's filters are query parameters, so a view is a URL that can be
reloaded, bookmarked and sent to someone; links between pages carry them on.
Each page has siblings for what it shows: `.../data.csv` and `.../data.parquet`
(`?table=` picks one of its tables) and `.../chart.png` (rendered by vl-convert
from the same Vega-Lite spec the page embeds).

The app that includes `router` sets `app.state.store` (a `Store` over the data
folder) and may set `app.state.calendar` (annotations: dicts or objects with
`date`, `title` and optional `url`; see `charts.Annotation`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from wallwatch import __version__
from wallwatch.analysis.report import charts
from wallwatch.analysis.report.exports import ExportFormat, write_export
from wallwatch.analysis.store import Store
from wallwatch.vocabulary import State, Verdict, service_plain
from wallwatch.web.dashboard import views
from wallwatch.web.dashboard.data import STATE_FILTERS, Filters, NoSeries, method_plain
from wallwatch.web.dashboard.views import NotFound, View

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
# The chart JavaScript vendored from the npm registry by scripts/install.sh (package.json).
VENDOR_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".map": "application/json"}

# Every dashboard route may answer 404 (an unknown country, network, event or measurement, or no
# data yet): documented once for all of them.
router = APIRouter(tags=["dashboard"], responses={404: {
    "content": {"text/html": {}, "text/plain": {}}, "description": "Nothing known by that name, or no data yet"}})


class BadFilter(ValueError):
    """A filter in the URL that cannot be read; the page says which and how to write it."""


def vendor_missing() -> list[str]:
    """The vendored chart files that are missing (the dashboard then says so, and draws charts server-side)."""
    return [name for name in VENDOR_FILES if not (VENDOR / name).is_file()]


def _templates() -> Any:
    from fastapi.templating import Jinja2Templates
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("wallwatch.web.dashboard", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = charts.when
    env.filters["day"] = lambda moment: "" if moment is None else moment.strftime("%a %d %b %Y")
    env.filters["pct"] = lambda share: "-" if share is None else f"{share:.0%}"
    env.globals.update(
        version=__version__, glyphs=charts.STATE_GLYPHS, colours=charts.STATE_COLOURS, ink=charts.GLYPH_INK,
        no_event_mark=charts.NO_EVENT_MARK, network_label=charts.network_label, method_plain=method_plain,
        state_plain=lambda s: State(s).plain if s in State._value2member_map_ else s,
        verdict_plain=lambda v: Verdict(v).plain if v in Verdict._value2member_map_ else v,
        states=list(State),
        service_plain=service_plain,
    )
    return Jinja2Templates(env=env)


_TEMPLATES: Any = None


def templates() -> Any:
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _templates()
    return _TEMPLATES


def _store(request: Request) -> Store:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("the app serving the dashboard must set app.state.store to a Store")
    return store


def _calendar(request: Request) -> list[charts.Annotation]:
    return charts.coerce_annotations(getattr(request.app.state, "calendar", None))


def _filters(request: Request) -> Filters:
    """The page's filters from its query string; a malformed one is refused with the format it needs."""
    query = request.query_params

    def text(name: str) -> str | None:
        value = (query.get(name) or "").strip()
        return value or None

    def day(name: str) -> date | None:
        value = text(name)
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise BadFilter(f"{name} must be a date written YYYY-MM-DD (e.g. 2017-09-20), got {value!r}") from None

    asn = text("asn")
    if asn is not None:
        digits = asn.upper().removeprefix("AS")
        if not digits.isdigit():
            raise BadFilter(f"asn must be a number such as 4134 or AS4134, got {asn!r}")
    cc = text("cc")
    if cc is not None and not (len(cc) == 2 and cc.isalpha()):
        raise BadFilter(f"cc must be a two-letter country code such as CN, got {cc!r}")
    state = text("state")
    if state is not None and state not in STATE_FILTERS:
        raise BadFilter(f"state can only be 'blocked' (show only what is blocked) or 'throttled' (only what is "
                        f"slowed down), got {state!r}")
    filters = Filters(cc=cc.upper() if cc else None, service=text("service"), feature=text("feature"),
                      asn=int(asn.upper().removeprefix("AS")) if asn else None, since=day("since"),
                      until=day("until"), state=state)
    if filters.since and filters.until and filters.until < filters.since:
        raise BadFilter(f"until ({filters.until}) is before since ({filters.since})")
    return filters


def _linker(request: Request) -> Callable[..., str]:
    """`link(route_name, query_dict=None, **path_params)`: a path under the app's root (proxy-safe)."""
    root = request.scope.get("root_path", "")

    def link(name: str, query: dict[str, Any] | None = None, **path: Any) -> str:
        url = root + request.app.url_path_for(name, **{k: str(v) for k, v in path.items()})
        clean = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        return url + ("?" + urlencode(clean) if clean else "")

    return link


def _page(request: Request, build: Callable[[], View], route: str, status_code: int = 200,
          **path: Any) -> HTMLResponse:
    try:
        view = build()
    except BadFilter as exc:
        return _message(request, "That filter cannot be read", str(exc), 400)
    except NotFound as exc:
        return _message(request, "Not found", str(exc), 404)
    except NoSeries:
        return _message(request, "No series yet",
                        "This data folder has no series yet. Run `wallwatch ingest`, `wallwatch series` and "
                        "`wallwatch events` on it (or submit measurements to the collector), then reload.", 200)
    missing = vendor_missing()
    chart_svgs = {}
    if missing:
        # Without the vendored JavaScript the charts are still shown, drawn on the server.
        import vl_convert as vlc

        chart_svgs = {chart.key: vlc.vegalite_to_svg(chart.spec_json()) for chart in view.charts}
    link = _linker(request)
    downloads = {
        "tables": [(name, link(f"{route}_data", {**view.filters.query(), "table": name}, fmt=fmt.value, **path), fmt.value)
                   for name in view.tables for fmt in ExportFormat],
        "charts": {chart.key: link(f"{route}_chart", {**view.filters.query(), "chart": chart.key}, **path)
                   for chart in view.charts},
    }
    context = {"view": view, "filters": view.filters, "link": link, "vendor_missing": missing,
               "chart_svgs": chart_svgs, "files": downloads, **view.context}
    return templates().TemplateResponse(request, f"{view.page}.html", context, status_code=status_code)


def _message(request: Request, title: str, text: str, status_code: int) -> HTMLResponse:
    return templates().TemplateResponse(request, "message.html", {
        "title": title, "text": text, "link": _linker(request), "vendor_missing": [], "filters": Filters()},
        status_code=status_code)


# What a download answers (the OpenAPI document says so: tests/web/test_api_spec.py holds the
# server to it): the table, or a plain-text reason when the page or its table does not exist.
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}},
          "description": "The page's table as CSV or Parquet"},
    400: {"content": {"text/plain": {}}, "description": "A filter in the query that cannot be read"},
    404: {"content": {"text/plain": {}}, "description": "No such page, table or data yet"},
}


def _download(request: Request, build: Callable[[], View], fmt: ExportFormat) -> Response:
    try:
        export = fmt
        view = build()
        name = request.query_params.get("table") or next(iter(view.tables), None)
        if name not in view.tables:
            raise NotFound(f"this page has no table {name!r}; it has {', '.join(view.tables) or 'none'}")
    except ValueError as exc:
        return Response(f"{exc}\n", status_code=400 if not isinstance(exc, LookupError) else 404,
                        media_type="text/plain")
    except (NotFound, NoSeries) as exc:
        return Response(f"{exc}\n", status_code=404, media_type="text/plain")
    with tempfile.TemporaryDirectory(prefix="wallwatch-download-") as folder:
        path = Path(folder) / f"{name}.{export.value}"
        write_export(view.tables[name], path, export)
        body = path.read_bytes()
    media = "text/csv; charset=utf-8" if export is ExportFormat.csv else "application/vnd.apache.parquet"
    filename = f"wallwatch-{view.page}-{name}.{export.value}"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _png(request: Request, build: Callable[[], View]) -> Response:
    try:
        view = build()
    except (BadFilter, NotFound, NoSeries) as exc:
        return Response(f"{exc}\n", status_code=400 if isinstance(exc, BadFilter) else 404, media_type="text/plain")
    key = request.query_params.get("chart")
    chart = next((c for c in view.charts if key in (None, c.key)), None)
    if chart is None:
        return Response(f"this page has no chart {key!r}\n", status_code=404, media_type="text/plain")
    filename = f"wallwatch-{view.page}-{chart.key}.png"
    return Response(charts.to_png(chart.spec), media_type="image/png",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# -- pages -------------------------------------------------------------------------------------


def _builders(request: Request) -> dict[str, Callable[..., View]]:
    """Each page's View builder over this request's store, calendar and filters."""
    store = _store(request)
    return {
        "overview": lambda: views.overview(store, _filters(request)),
        "country": lambda cc: views.country(store, cc.upper(), _filters(request)),
        "network": lambda cc, asn: views.network(store, cc.upper(), _asn(asn), _filters(request)),
        "timeline": lambda: views.timeline(store, _filters(request), _calendar(request)),
        "heatmap": lambda: views.heatmap(store, _filters(request)),
        "event": lambda event_id: views.event(store, event_id, _calendar(request)),
        "measurement": lambda uid: views.measurement(store, uid),
    }


def _asn(text: str) -> int:
    digits = text.upper().removeprefix("AS")
    if not digits.isdigit():
        raise NotFound(f"{text!r} is not a network number (AS4134 or 4134)")
    return int(digits)


@router.get("/", response_class=HTMLResponse, name="overview")
def overview_page(request: Request) -> HTMLResponse:
    """What is blocked now, per country, service and feature."""
    return _page(request, _builders(request)["overview"], "overview")


@router.get("/data.{fmt}", name="overview_data", responses=_DOWNLOAD_RESPONSES)
def overview_data(request: Request, fmt: ExportFormat) -> Response:
    return _download(request, _builders(request)["overview"], fmt)


@router.get("/country/{cc}", response_class=HTMLResponse, name="country")
def country_page(request: Request, cc: str) -> HTMLResponse:
    return _page(request, lambda: _builders(request)["country"](cc), "country", cc=cc)


@router.get("/country/{cc}/data.{fmt}", name="country_data", responses=_DOWNLOAD_RESPONSES)
def country_data(request: Request, cc: str, fmt: ExportFormat) -> Response:
    return _download(request, lambda: _builders(request)["country"](cc), fmt)


@router.get("/country/{cc}/chart.png", name="country_chart")
def country_chart(request: Request, cc: str) -> Response:
    return _png(request, lambda: _builders(request)["country"](cc))


@router.get("/network/{cc}/{asn}", response_class=HTMLResponse, name="network")
def network_page(request: Request, cc: str, asn: str) -> HTMLResponse:
    return _page(request, lambda: _builders(request)["network"](cc, asn), "network", cc=cc, asn=asn)


@router.get("/network/{cc}/{asn}/data.{fmt}", name="network_data", responses=_DOWNLOAD_RESPONSES)
def network_data(request: Request, cc: str, asn: str, fmt: ExportFormat) -> Response:
    return _download(request, lambda: _builders(request)["network"](cc, asn), fmt)


@router.get("/network/{cc}/{asn}/chart.png", name="network_chart")
def network_chart(request: Request, cc: str, asn: str) -> Response:
    return _png(request, lambda: _builders(request)["network"](cc, asn))


@router.get("/timeline", response_class=HTMLResponse, name="timeline")
def timeline_page(request: Request) -> HTMLResponse:
    return _page(request, _builders(request)["timeline"], "timeline")


@router.get("/timeline/data.{fmt}", name="timeline_data", responses=_DOWNLOAD_RESPONSES)
def timeline_data(request: Request, fmt: ExportFormat) -> Response:
    return _download(request, _builders(request)["timeline"], fmt)


@router.get("/timeline/chart.png", name="timeline_chart")
def timeline_chart(request: Request) -> Response:
    return _png(request, _builders(request)["timeline"])


@router.get("/heatmap", response_class=HTMLResponse, name="heatmap")
def heatmap_page(request: Request) -> HTMLResponse:
    return _page(request, _builders(request)["heatmap"], "heatmap")


@router.get("/heatmap/data.{fmt}", name="heatmap_data", responses=_DOWNLOAD_RESPONSES)
def heatmap_data(request: Request, fmt: ExportFormat) -> Response:
    return _download(request, _builders(request)["heatmap"], fmt)


@router.get("/heatmap/chart.png", name="heatmap_chart")
def heatmap_chart(request: Request) -> Response:
    return _png(request, _builders(request)["heatmap"])


@router.get("/event/{event_id}", response_class=HTMLResponse, name="event")
def event_page(request: Request, event_id: str) -> HTMLResponse:
    return _page(request, lambda: _builders(request)["event"](event_id), "event", event_id=event_id)


@router.get("/event/{event_id}/data.{fmt}", name="event_data", responses=_DOWNLOAD_RESPONSES)
def event_data(request: Request, event_id: str, fmt: ExportFormat) -> Response:
    return _download(request, lambda: _builders(request)["event"](event_id), fmt)


@router.get("/event/{event_id}/chart.png", name="event_chart")
def event_chart(request: Request, event_id: str) -> Response:
    return _png(request, lambda: _builders(request)["event"](event_id))


@router.get("/measurement/{uid}", response_class=HTMLResponse, name="measurement")
def measurement_page(request: Request, uid: str) -> HTMLResponse:
    return _page(request, lambda: _builders(request)["measurement"](uid), "measurement", uid=uid)


@router.get("/measurement/{uid}/data.{fmt}", name="measurement_data", responses=_DOWNLOAD_RESPONSES)
def measurement_data(request: Request, uid: str, fmt: ExportFormat) -> Response:
    return _download(request, lambda: _builders(request)["measurement"](uid), fmt)


@router.get("/measurement/{uid}/chart.png", name="measurement_chart")
def measurement_chart(request: Request, uid: str) -> Response:
    return _png(request, lambda: _builders(request)["measurement"](uid))


@router.get("/measurement/{uid}/raw.json", name="measurement_raw")
def measurement_raw(request: Request, uid: str) -> Response:
    """The measurement's original JSON text, byte for byte as it was ingested."""
    from wallwatch.analysis.ingest.pipeline import read_raw

    try:
        raw = read_raw(_store(request), uid)
    except KeyError:
        return Response(f"no raw text kept for {uid}\n", status_code=404, media_type="text/plain")
    return Response(raw, media_type="application/json",
                    headers={"Content-Disposition": f'inline; filename="{uid}.json"'})


@router.get("/static/{path:path}", name="static")
def static(path: str) -> Response:
    """The dashboard's own CSS/JS and the vendored chart library; nothing outside `static/`."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        return Response("not found\n", status_code=404, media_type="text/plain")
    return FileResponse(target, media_type=_MEDIA_TYPES.get(target.suffix, "application/octet-stream"),
                        headers={"Cache-Control": "max-age=3600"})
