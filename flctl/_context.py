"""What every command gets: broker options, the output streams, a logger for the session (`session_logger`),
the clock."""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger

from flctl._client import BrokerClient, BrokerOptions
from flctl._errors import FlctlError, PublishFailedError
from schemas import now


def _ask(prompt: str) -> str:
    # getpass reads the terminal itself (not stdin, which may carry `create -f -` input) and does not echo.
    return getpass.getpass(prompt)


@dataclass
class Context:
    options: BrokerOptions
    out: TextIO
    err: TextIO
    stdin: TextIO
    log: FilteringBoundLogger | None = None
    clock: Callable[[], datetime] = field(default=now)
    ask_password: Callable[[str], str] = field(default=_ask)

    def client(self) -> BrokerClient:
        """A new, not yet connected client (use it as a context manager).

        A username without a password is asked for here, on a terminal only, so commands that never
        connect (version, create --dry-run, dataset, broker init) never ask."""
        if self.options.needs_password and self.stdin.isatty():
            conn = self.options.connection
            self.options = self.options.with_password(
                self.ask_password(f"Password for {conn.username} at {conn.host}:{conn.port}: ")
            )
        return BrokerClient(self.options, log=self.log)

    def say(self, text: str) -> None:
        """A line (or block) of normal output on stdout, flushed: `--watch` output must not wait."""
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """A remark on stderr that is not output (kubectl's "No resources found.")."""
        self.err.write(text + "\n")
        self.err.flush()

    def warn(self, text: str) -> None:
        self.err.write(f"Warning: {text}\n")
        self.err.flush()

    def fail(self, error: FlctlError) -> None:
        """Report one failure of a multi-resource request and carry on (the exit code says it failed)."""
        self.err.write(error.render() + "\n")
        self.err.flush()

    def publish_one(
        self, client: BrokerClient, topic: str, payload: bytes, user_properties: Mapping[str, str] | None = None
    ) -> bool:
        """Publish one resource of a multi-resource request (retained, acknowledged). A refusal is reported
        and the request carries on (False); a broker that does not answer at all ends it (exit 3)."""
        try:
            client.publish_retained(topic, payload, user_properties)
        except PublishFailedError as exc:
            if exc.timed_out:
                raise
            self.fail(exc)
            return False
        return True


def session_logger(verbose: bool, err: TextIO) -> FilteringBoundLogger:
    """The MQTT session's logger: silent unless -v, then readable lines on stderr (never stdout)."""
    if not verbose:
        logger = structlog.wrap_logger(
            structlog.ReturnLogger(),
            wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
            processors=[],
        )
    else:
        logger = structlog.wrap_logger(
            structlog.PrintLogger(err),
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    return cast(FilteringBoundLogger, logger)
