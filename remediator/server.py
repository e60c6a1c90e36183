"""``pgmedic remediator``: serve the app with pgmedic.httpserver, as child subreaper of the servers it starts."""

from __future__ import annotations

import ipaddress
import logging
import threading

from pgmedic.config import Config, listen_address
from pgmedic.deployment import deployment_problems
from pgmedic.errors import ConfigError
from pgmedic.httpserver import Server, stop_on_signals
from pgmedic.reaper import become_subreaper, start_reaper
from pgmedic.reload import Reloader
from pgmedic.webconfig import WebState, protect

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(config: Config, listen: str | None = None, web_config_file: str | None = None) -> int:
    from .app import WEBHOOK_PATH, create_app
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
    web = WebState(web_config_file or config.remediator.web_config_file)
    app = create_app(config)
    rem = app.extensions["pgmedic"]
    # Alertmanager's webhook keeps its bearer token; basic auth guards the read side.
    guarded = protect(app, web.current, exempt=lambda environ: environ.get("PATH_INFO") == WEBHOOK_PATH)
    server = Server(guarded, host, port, web, threads=8, ident="pgmedic-remediator", max_body=MAX_BODY)
    stop_on_signals(server)

    def reload(new: Config) -> None:
        rem.reload(new)
        web.reload()

    reloader = Reloader(rem.status, reload, "remediator")
    reloader.install()
    log.warning("pgmedic remediator on %s://%s:%d for %d instance(s)", server.scheme, host, port, len(config.instances))
    try:
        server.run()
    finally:
        stop.set()
        reloader.close()
        rem.stop()
        server.close()
    return 0
