"""Exceptions of flctl and the exit code each one maps to.

    FlctlError                  root: everything flctl raises on purpose (exit 1 unless said otherwise)
    ├── UsageError                  the command line is wrong (exit 2, like argparse)
    ├── InputError                  a file cannot be read or a document is invalid; nothing was published
    ├── NotFoundError               the named resource has no retained spec (kubectl's NotFound wording)
    ├── AlreadyExistsError          a different spec is already retained under that name (AlreadyExists)
    ├── DatasetToolError            `flctl dataset ...` failed (missing generator, missing image)
    ├── JobFailedError              a watched or awaited job ended Failed (or can no longer reach the
    │                               awaited condition)
    ├── WaitTimeoutError            `wait` / `get -w --watch-timeout` ran out of time (exit 4)
    └── BrokerError                 the broker side of a request failed
        ├── BrokerUnreachableError  no MQTT connection within --timeout (exit 3)
        ├── PublishFailedError      the broker refused a publish or did not acknowledge it in time
        │                           (exit 3 when it was not acknowledged at all)
        └── NoAnswerError           a node did not answer a request (logs, ledger) within --timeout

Each carries what the user needs to act: the resource, the topic, the broker address, the reason code.
`str(error)` is the whole message, without the leading ``error:`` that the CLI adds.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# Distinct from 1 so that a script can tell "still running when time ran out" from "failed".
EXIT_TIMEOUT = 4


class FlctlError(Exception):
    """Root of flctl's exceptions; `exit_code` is what the process returns."""

    exit_code = EXIT_ERROR
    #: Printed before the message (kubectl prints "Error from server (NotFound): ..." for some).
    prefix = "error: "

    def render(self) -> str:
        return f"{self.prefix}{self}"


class UsageError(FlctlError):
    """The command line is wrong (an unknown resource type, a missing argument)."""

    exit_code = EXIT_USAGE


class InputError(FlctlError):
    """A file cannot be read or holds an invalid document."""


def resource_ref(plural: str, name: str) -> str:
    """`federatedlearningjobs "x"` as kubectl writes it in errors."""
    return f'{plural} "{name}"'


class _ResourceRefusedError(FlctlError):
    """kubectl's ``Error from server (<Reason>): <plural> "<name>" <what>`` about one named resource."""

    #: The end of the message, after the resource: "not found", "already exists".
    what = ""

    def __init__(self, plural: str, name: str) -> None:
        self.plural = plural
        self.name = name
        super().__init__(f"{resource_ref(plural, name)} {self.what}")


class NotFoundError(_ResourceRefusedError):
    """No retained spec under this name: ``Error from server (NotFound): datasets "x" not found``."""

    prefix = "Error from server (NotFound): "
    what = "not found"


class AlreadyExistsError(_ResourceRefusedError):
    """A different spec is retained under this name; `flctl delete` it first."""

    prefix = "Error from server (AlreadyExists): "
    what = "already exists"


class DatasetToolError(FlctlError):
    """`flctl dataset synth|split` could not do its work."""


class JobFailedError(FlctlError):
    """A job ended (or already is) in a state that the watch or wait was not for; says why."""


class WaitTimeoutError(FlctlError):
    """Time ran out before the awaited state: kubectl's "timed out waiting for the condition on ..."."""

    exit_code = EXIT_TIMEOUT


class BrokerError(FlctlError):
    """The broker side of a request failed."""


class BrokerUnreachableError(BrokerError):
    """No MQTT connection to HOST:PORT within --timeout."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot reach the MQTT broker at {host}:{port}: {reason}")


class PublishFailedError(BrokerError):
    """A publish was refused (a reason code, e.g. not authorized) or not acknowledged in time."""

    def __init__(self, topic: str, reason: str, *, reason_code: int | None = None, timed_out: bool = False) -> None:
        self.topic = topic
        self.reason = reason
        self.reason_code = reason_code
        self.timed_out = timed_out
        if timed_out:
            self.exit_code = EXIT_UNREACHABLE
        super().__init__(f"publishing to {topic} failed: {reason}")


class NoAnswerError(BrokerError):
    """A node service did not answer a request within the time given (offline, or not this version)."""

    def __init__(self, node: str, what: str, timeout: float) -> None:
        self.node = node
        super().__init__(
            f"node {node} did not answer the {what} request within {timeout:g}s "
            f"(is its service running? see `flctl get nodes`)"
        )
