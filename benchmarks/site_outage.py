"""A site's WAN down for minutes in the middle of a round (issue 13, store and forward), on demand.

The bridged layout of tests/sites (tests/helpers/sites.py: a cloud broker and two site brokers, real Mosquitto
processes, TLS, per-node passwords and ACLs, each site's bridge through its own TCP proxy): edge1 behind
site-a, edge2 behind site-b, the aggregator on the cloud broker, the tiny numpy job of the fault tests (no
TensorFlow). In round 2 site-a's WAN goes silent for ``--minutes`` (packets vanish, connections hang: the
bridge's keepalive notices; not a link that accepts and resets, which wedges Mosquitto 2.0.11's TLS bridge,
docs/operations.md); meanwhile edge1 trains and publishes its round-2 update to site-a's
broker, and republishes its manifest every ``--ack-timeout`` seconds as it would for real. Then the link returns.

Reported: how long the cloud took to see the site down and back, what the job status and event stream said
meanwhile (and that the round stayed open), how many manifests edge1 queued, how long the round took to close
after the link returned, the outcome checks of tests/sites (every round has both edges once, the global models
are the FedAvg of what the edges recorded, the final models equal) and each broker's dropped counter.

Run: ``.venv/bin/python benchmarks/site_outage.py --minutes 5`` (about a minute more than ``--minutes``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas import JobStatus  # noqa: E402
from tests.helpers.mqtt import wait_until  # noqa: E402
from tests.helpers.site_jobs import SiteJob, start_site_job  # noqa: E402
from tests.helpers.sites import SiteBed  # noqa: E402

SITES = {"site-a": ["edge1"], "site-b": ["edge2"]}


def _site_a(status: JobStatus | None) -> bool | None:
    sites = status.sites if status is not None and status.sites else []
    return next((s.reachable for s in sites if s.name == "site-a"), None)


def _outage(job: SiteJob, bed: SiteBed, minutes: float, report: dict[str, object]) -> None:
    watch = job.watch
    watch.wait(lambda w: w.status is not None and w.status.current_round == 2, 120, "round 2 open")
    t0 = time.monotonic()
    bed.wan["site-a"].blackhole()
    bed.wait_bridge("site-a", up=False, timeout=60)
    report["cloud saw site-a down after (s)"] = round(time.monotonic() - t0, 1)
    watch.wait(lambda w: _site_a(w.status) is False, 30, "site-a shown unreachable")
    report["status shows site-a unreachable after (s)"] = round(time.monotonic() - t0, 1)
    job.open_gate("edge1", 2)
    job.open_gate("edge2", 2)
    wait_until(lambda: job.published_update("edge1", 2), 120, "edge1 published its round-2 update")
    # The outage lasts `minutes` from the moment the link went silent.
    end = t0 + minutes * 60
    if (left := end - time.monotonic()) > 0:
        time.sleep(left)  # the outage itself: nothing to wait for but the clock
    status = watch.status
    assert status is not None
    report["status at the end of the outage"] = {
        "round": status.current_round,
        "waitingFor": status.waiting_for,
        "message": status.message,
        "conditions": [f"{c.type.value}={c.status} {c.reason}: {c.message}" for c in status.conditions],
        "edge1 entry": next((f"{w.state.value}@{w.round}" for w in status.workers if w.node == "edge1"), None),
    }
    report["edge1 manifests queued for round 2"] = job.manifests_published("edge1", 2)
    restored = time.monotonic()
    bed.wan["site-a"].restore()
    bed.wait_bridge("site-a", up=True, timeout=60)
    report["outage (s)"] = round(restored - t0, 1)
    report["bridge up after restore (s)"] = round(time.monotonic() - restored, 1)
    watch.wait(lambda w: w.status is not None and len(w.status.rounds) >= 2, 120, "round 2 closed")
    report["round 2 closed after restore (s)"] = round(time.monotonic() - restored, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long site-a's WAN is down (default 5)")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="the edges' --ack-timeout (default 30)")
    parser.add_argument("--hidden", type=int, default=16, help="model width: 9 x HIDDEN parameters (default 16)")
    parser.add_argument("--workdir", type=Path, help="where to lay out the nodes (default: a temporary folder)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.ack_timeout <= 0 or args.hidden < 1:
        parser.error("--minutes and --ack-timeout must be > 0, --hidden >= 1")
    with tempfile.TemporaryDirectory(prefix="site-outage-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bed = SiteBed(root, SITES)
        report: dict[str, object] = {"started": datetime.now(UTC).isoformat(timespec="seconds")}
        bed.start()
        job = start_site_job(bed, exit_round=3, hold_round=2, ack_timeout=args.ack_timeout, hidden=args.hidden)
        try:
            _outage(job, bed, args.minutes, report)
            final = job.watch.wait_finished(300)
            job.assert_rounds(final)
            job.assert_fedavg(final)
            report["job"] = final.phase.value
            report["rounds"] = [
                {
                    "round": r.round,
                    "participants": r.participants,
                    "samples": r.total_samples,
                    "seconds": r.duration_seconds,
                }
                for r in final.rounds
            ]
            report["site events"] = [
                f"{e.type} {e.reason}: {e.message}" for e in job.watch.events if e.reason.startswith("Site")
            ]
            report["checks"] = "every round has both edges once; globals = FedAvg of the recorded updates; finals equal"
            report["dropped"] = job.bed.dropped_counts()
        except AssertionError as exc:
            report["failed"] = str(exc)
        finally:
            job.watch.__exit__(None, None, None)
            bed.stop()
    _print(report)
    dropped = report.get("dropped")
    return 0 if isinstance(dropped, dict) and set(dropped.values()) == {0} else 1


def _print(report: dict[str, object]) -> None:
    for key, value in report.items():
        if isinstance(value, dict | list):
            print(f"{key}:")
            for item in value.items() if isinstance(value, dict) else enumerate(value):
                print(f"  {item[0]}: {item[1]}" if isinstance(value, dict) else f"  - {item[1]}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
