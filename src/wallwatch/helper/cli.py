"""`wallwatch helper serve`: run the web_connectivity test helper.

Heavy imports live inside the command so `wallwatch --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

helper_app = typer.Typer(help="The web_connectivity test helper (OONI's TH API), a control outside the censor.",
                         no_args_is_help=True)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit():
        raise typer.BadParameter(f"{text!r} is not HOST[:PORT]")
    return host.strip("[]"), int(port)


@helper_app.command("serve")
def serve(
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to listen on."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate chain."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="The certificate's private key."),
    resolver: Optional[str] = typer.Option(None, "--resolver", help="IP[:PORT] of a DNS resolver to ask over UDP "
                                           "(default: the system resolver)."),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="Trust only these CA certificates (default: "
                                           "the system store)."),
    network: list[str] = typer.Option([], "--network", help="CIDR (repeatable): the helper's internet. Addresses "
                                      "in it are public, any other is never dialled. Default: every globally "
                                      "routable address (bogons are never dialled)."),
    timeout: float = typer.Option(4.0, "--timeout", min=0.1, help="Bound for each step, in seconds."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", help="Write {pid, listen} here once listening."),
) -> None:
    """Answer control requests (POST /) until SIGTERM or SIGINT."""
    import asyncio
    import json
    import logging
    import os
    import signal

    from wallwatch.helper.measure import HelperConfig, parse_networks
    from wallwatch.helper.server import server_tls_context, start

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    host, port = _host_port(listen, 8080)
    try:
        config = HelperConfig(resolver=_host_port(resolver, 53) if resolver else None,
                              ca_file=str(ca_file) if ca_file else None, networks=parse_networks(network),
                              timeout=timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--network") from None
    tls = server_tls_context(str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server, helper = await start(config, host, port, tls=tls)
        scheme = "https" if tls else "http"
        logging.getLogger("wallwatch.helper").info("listening on %s://%s:%d", scheme, host, port)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "listen": f"{scheme}://{host}:{port}/"}))
            os.replace(tmp, ready_file)
        await stop.wait()
        server.close()
        logging.getLogger("wallwatch.helper").info("stopped after %d control requests", helper.served)

    asyncio.run(run())


def register(app: typer.Typer) -> None:
    app.add_typer(helper_app, name="helper")
