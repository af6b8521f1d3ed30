"""The warm worker's own program: import the heavy modules, wait for one launch, run that script, exit.

Run as a file (``python .../_warm_main.py CONTROL_FD MODULE...``), never imported by the services: it
uses only the standard library so that nothing but the named modules is loaded before the script.
The service sends one launch on the control socket: a JSON document (script, cwd, env) and two file
descriptors (the script's end of the worker channel, the job's log opened for appending). The launch
is applied exactly as a cold start would see it (environment replaced, cwd, argv, sys.path[0], stdout
and stderr on the log), then the script runs as ``__main__`` and this process exits with its code.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import socket
import sys
import traceback

_MAX_FDS = 2


def _receive(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    # The service sends the whole document then closes its end: read to EOF.
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, _MAX_FDS)
    chunks = [data]
    while data:
        data = sock.recv(65536)
        chunks.append(data)
    raw = b"".join(chunks)
    return (json.loads(raw) if raw else {}), fds


def _exit_code(exc: SystemExit) -> int:
    # What the interpreter does with SystemExit at the top level of a cold start.
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main() -> int:
    control = int(sys.argv[1])
    modules = sys.argv[2:]
    sys.path.pop(0)  # this file's folder (runtime/): its private modules must not shadow the script's imports
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the script will fail on it as a cold start would; the warm log says why
            print(f"warm worker: cannot preload {name}: {exc}", file=sys.stderr, flush=True)
    sock = socket.socket(fileno=control)
    sock.sendall(b"R")
    launch, fds = _receive(sock)
    sock.close()
    if len(fds) != _MAX_FDS or not launch:
        return 0  # the service went away or closed the pool: nothing to run
    channel_fd, log_fd = fds
    env = {str(k): str(v) for k, v in dict(launch["env"]).items()}  # type: ignore[call-overload]
    env["FL_WORKER_FD"] = str(channel_fd)  # the variable named by schemas.WorkerEnv.WORKER_FD
    os.set_inheritable(channel_fd, True)  # as pass_fds leaves it in a cold start's script
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.clear()
    os.environ.update(env)
    script = str(launch["script"])
    os.chdir(str(launch["cwd"]))
    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
