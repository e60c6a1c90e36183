"""pgmedic: keep PostgreSQL instances alive, the Prometheus way.

The core package holds what the exporter, the remediator and the CLI share: the configuration,
the instance model (postmaster.pid, the postmaster process and its children, the SQL probe) and the
start/stop/monitor actions.
"""

__version__ = "0.1.0"
