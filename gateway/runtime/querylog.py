"""The running gateway's query log: made when the first network with `query_log:` is built
(no file, no task and no hook for anyone until then), then written and purged until stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from gateway.config.limits import QueryLogLimits
from gateway.policy.decide import QueryHook
from gateway.policy.policyfile import QUERY_LOG_HOURS

if TYPE_CHECKING:
    from gateway.querylog.recorder import QueryRecorder
    from gateway.querylog.store import QueryLogStore


class QueryLogService:
    def __init__(self, state_dir: Path, limits: QueryLogLimits, registry: CollectorRegistry,
                 stop: asyncio.Event, retention: Callable[[], Mapping[str, int]],
                 tasks: list[asyncio.Task[None]]) -> None:
        self.state_dir = state_dir
        self.limits = limits
        self.registry = registry
        self.stop = stop
        self.retention = retention
        self.tasks = tasks            # the gateway's background tasks, awaited at stop
        self.recorder: QueryRecorder | None = None

    def hook(self, network: str, tier: str) -> QueryHook:
        """Builder.query_log: the hook for one logged network (starting the writer once)."""
        if self.recorder is None:
            # Imported here: a gateway without a query log never loads sqlite3 for it.
            from gateway.querylog.recorder import QueryRecorder

            self.recorder = QueryRecorder(self.state_dir, self.limits, self.registry)
            self.tasks.append(asyncio.get_running_loop().create_task(
                self.recorder.run(self.stop, self.retention, QUERY_LOG_HOURS[0]),
                name="query-log"))
        return self.recorder.hook(network, tier)

    @property
    def store(self) -> QueryLogStore | None:
        return self.recorder.store if self.recorder is not None else None
