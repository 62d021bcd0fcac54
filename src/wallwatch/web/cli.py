"""`wallwatch serve`: the collector, the live pipeline and the dashboard on one port (docs/observatory.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="Data directory (default: $WALLWATCH_DATA or ./wallwatch-data)."),
]
# Submitters' tokens are secrets: a short one can be guessed.
MIN_TOKEN_CHARS = 16


def read_tokens(path: Path) -> frozenset[str]:
    """One bearer token per line; blank lines and `#` comments ignored."""
    tokens = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    tokens = [token for token in tokens if token and not token.startswith("#")]
    short = [index for index, token in enumerate(tokens, 1) if len(token) < MIN_TOKEN_CHARS or " " in token]
    if short:
        raise typer.BadParameter(f"token(s) {short} are shorter than {MIN_TOKEN_CHARS} characters or contain "
                                 "spaces", param_hint="--tokens")
    if not tokens:
        raise typer.BadParameter(f"{path} holds no token", param_hint="--tokens")
    return frozenset(tokens)


def serve_command(
    data: DataOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8470,
    tokens: Annotated[Path | None, typer.Option(
        "--tokens", exists=True, dir_okay=False,
        help="File of bearer tokens, one per line: submissions then need one (default: open).")] = None,
    alerts: Annotated[Path | None, typer.Option(
        "--alerts", exists=True, dir_okay=False, help="Webhooks to alert (YAML, docs/observatory.md).")] = None,
    calendar: Annotated[Path | None, typer.Option(
        "--calendar", exists=True, dir_okay=False, help="Annotations shown beside events (YAML).")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Run the live pipeline (verdicts, series, events, "
                                       "alerts as measurements arrive).")] = True,
    commit_seconds: Annotated[float, typer.Option(
        "--commit-seconds", min=0.01, max=60.0,
        help="How often accepted measurements are handed to the live pipeline (seconds).")] = 0.5,
    max_measurement_bytes: Annotated[int, typer.Option(
        min=1024, help="Largest measurement accepted (bytes; OONI's largest are about 1 MB).")] = 8 * 1024 * 1024,
    max_bulk_bytes: Annotated[int, typer.Option(
        min=1024, help="Largest JSON-lines body accepted by /api/v1/measurements (bytes).")] = 64 * 1024 * 1024,
    tag_authority: Annotated[str | None, typer.Option(
        help="Tag URI authority of feed and alert ids, 'yourdomain.org,2025' (RFC 4151).")] = None,
) -> None:
    """Run the observatory: OONI-compatible collector, live pipeline, alerts, feed and dashboard."""
    import uvicorn

    from wallwatch.analysis.events.feeds import DEFAULT_TAG_AUTHORITY, FeedError
    from wallwatch.web.alerts import AlertsConfigError
    from wallwatch.web.app import ServeConfig, create_app
    from wallwatch.web.calendar import CalendarError

    root = data or Path(os.environ.get("WALLWATCH_DATA") or "wallwatch-data")
    root.mkdir(parents=True, exist_ok=True)
    config = ServeConfig(root, read_tokens(tokens) if tokens else frozenset(), alerts, calendar, live,
                         seal_after=commit_seconds, max_measurement_bytes=max_measurement_bytes,
                         max_bulk_bytes=max_bulk_bytes, tag_authority=tag_authority or DEFAULT_TAG_AUTHORITY)
    try:
        app = create_app(config)
    except (AlertsConfigError, CalendarError, FeedError) as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"wallwatch serve: http://{host}:{port}/ over {root} "
               f"({'live pipeline on' if live else 'collector only'}; submissions "
               f"{'need a token' if tokens else 'open to anyone who can reach the port'})", err=True)
    # No access log: it would record each submitter's address, which the collector never keeps.
    uvicorn.run(app, host=host, port=port, access_log=False, proxy_headers=False, server_header=False,
                http="httptools", loop="uvloop", timeout_graceful_shutdown=10, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
