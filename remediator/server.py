"""``pgmedic remediator``: serve the app with waitress, as child subreaper of the servers it starts."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading

from pgmedic.config import Config, listen_address
from pgmedic.deployment import deployment_problems
from pgmedic.errors import ConfigError
from pgmedic.httpserver import server_limits
from pgmedic.reaper import become_subreaper, start_reaper
from pgmedic.reload import Reloader

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(config: Config, listen: str | None = None) -> int:
    import waitress

    from .app import create_app
    from .payload import MAX_BODY

    host, port = listen_address(config.path, "remediator.listen", listen, config.remediator.listen)
    if not config.remediator.token_file and not is_loopback(host):
        raise ConfigError(config.path, "remediator.token_file", f"required to listen on non-loopback address {host}")
    if not config.remediator.token_file:
        log.warning("no remediator.token_file: accepting unauthenticated alerts on loopback only")
    for problem in deployment_problems(config):  # the token and state directory refuse below, in create_app
        log.warning("%s: %s", config.path, problem)
    stop = threading.Event()
    if become_subreaper():
        start_reaper(stop)
    app = create_app(config)
    rem = app.extensions["pgmedic"]
    server = waitress.create_server(
        app, host=host, port=port, threads=8, ident="pgmedic-remediator", **server_limits(MAX_BODY)
    )

    def shutdown(signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    Reloader(rem.status, rem.reload, "remediator").install(stop)
    log.warning("pgmedic remediator on http://%s:%d for %d instance(s)", host, port, len(config.instances))
    try:
        server.run()
    except OSError:
        pass  # closed by the signal handler
    finally:
        stop.set()
        rem.stop()
    return 0
