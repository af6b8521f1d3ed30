"""The environment a worker script runs in, built the same way by both node services.

A script sees the service's own environment minus the node's broker settings and credentials
(``FL_MQTT_*``: scripts never touch MQTT), plus the worker's variables (Sedna's names, see
`schemas.WorkerEnv`, and the job's parameters under their own keys, each passing the spec's name
rule again: `script_parameters`), plus its end of the worker
channel (``FL_WORKER_FD``). When the services run from a source checkout rather than an installed
package, the checkout is appended to ``PYTHONPATH`` so the script imports the same worker API as
the service that runs it (the script runs in its own folder, from which the checkout is not importable).
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Collection, Mapping
from pathlib import Path

from runtime._errors import ScriptStartError
from schemas import WorkerEnv, parameter_name_problem, parameter_value_problem

__all__ = ["PRIVATE_ENV_PREFIXES", "script_environment", "script_parameters", "source_checkout"]

# The node service's own broker settings (and credentials) never reach a job's script.
PRIVATE_ENV_PREFIXES = ("FL_MQTT_",)


def source_checkout() -> str | None:
    """The folder holding this `runtime` when it is not an installed package (a source checkout), else None."""
    folder = Path(__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p}
    return None if folder in installed else str(folder)


def script_parameters(parameters: Mapping[str, str], reserved: Collection[str]) -> dict[str, str]:
    """The job's parameters, checked again before they become environment variables of its script.

    The rule is the spec's (`schemas.parameter_name_problem`, `schemas.parameter_value_problem`): a spec
    was checked when it was accepted, but a plan or script request read from the broker may come from an
    older aggregator or another publisher, and a name such as ``LD_PRELOAD`` would change what this node
    runs. A name the node service sets itself (`reserved`, the caller's own variables, and
    ``FL_WORKER_FD``) is refused as well. Raises ScriptStartError naming the parameter.
    """
    taken = {*reserved, WorkerEnv.WORKER_FD}
    for key, value in parameters.items():
        reason = parameter_name_problem(key) or parameter_value_problem(key, value)
        if reason is None and key in taken:
            reason = f"the node service sets {key} itself"
        if reason is not None:
            raise ScriptStartError(f"parameter {key!r} cannot be passed to the script: {reason}")
    return dict(parameters)


def script_environment(
    variables: Mapping[str, str], *, fd: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The script's environment: `base` (default: this process's) minus private settings, then `variables`,
    then the channel's fd (and the checkout on PYTHONPATH when running from one)."""
    inherited = os.environ if base is None else base
    env = {k: v for k, v in inherited.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}
    env.update(variables)
    env[WorkerEnv.WORKER_FD] = str(fd)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the log tail in a failure message must be current
    source = source_checkout()
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), source) if p)
    return env
