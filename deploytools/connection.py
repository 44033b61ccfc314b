"""What a task needs from a host connection, and the connectors that make one.

Tasks and steps only ever see this interface. The SSH connection (transport.py) is
the real backend; the dry-run backend (dryrun.py) wraps it and describes every change
instead of making it; the tests' fake backend (tests/support/fakehosts.py) answers from
memory, so the orchestration can be tested without a host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from deploytools import access
from deploytools.costs import CostBook
from deploytools.inventory import Host
from deploytools.remote.protocol import Request
from deploytools.transport import AgentCall, Answer, HostConnection


class Connection(Protocol):
    """One host's connection for a whole run: one agent session, one request per step."""

    endpoint: access.Endpoint | None  # where it connected, once resolved
    # counters the JSON report and the benchmarks read
    connections: int
    commands: int
    requests: int
    bytes_sent: int
    costs: CostBook  # what each operation cost, both ends

    @property
    def fabric(self) -> Any: ...  # the Fabric connection for local Python hooks, if any

    def open(self) -> None: ...

    def start_agent(self) -> None: ...

    def io_thread_id(self) -> int | None: ...  # the thread reading it, for its CPU

    def call(self, request: Request, on_event: Callable[[str], None] | None = None,
             timeout: float | None = None, answer: Answer | None = None) -> AgentCall: ...

    def close(self) -> None: ...


Connector = Callable[[Host], Connection]


def ssh_connector(dry_run: bool = False) -> Connector:
    """The real backend: a verified SSH connection per host (described, in a dry run)."""
    if not dry_run:
        return HostConnection
    from deploytools.dryrun import DryRunConnection

    return lambda host: DryRunConnection(HostConnection(host))
