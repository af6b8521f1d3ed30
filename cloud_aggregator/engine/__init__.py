"""The controller and the job engine of the cloud aggregator: pure, driven by method calls.

`Controller` owns every resource's status (Datasets and Models in its `_registry`) and hands each valid
job to a `Job`, which runs it through
its stages (`Stage`) and owns its status from then on::

    STARTING --config frame--> INIT --first valid init--> TRAINING --round exit_round closes--> FINAL
       |                         |                          |                                     |
       +-- script exit/error, config timeout, unknown strategy, worker Failed, publish failure ---+--> DONE
                                                                 every worker Completed (FINAL) --> DONE

- **STARTING**: the aggregation script runs; its `config` frame (aggregation, exit_round,
  participants_count) must arrive within `config_timeout`. Then the plan is published (retained) and
  the job is Running.
- **INIT** (round 0): the first valid `init` transfer from any participant becomes the global model of
  round 0, so every edge starts round 1 from identical weights.
- **TRAINING** (rounds 1..exit_round): each participant's update for the current round is checked and
  folded into the strategy's accumulator on arrival, exactly once; when the round closes, its global
  model is published (retained; only the latest round stays retained), with `final` on round exit_round.
- **FINAL**: the final weights are written under the Model url; when every worker of the final round
  reports Completed the job is Succeeded and the script gets `finish`.

A failed job (Sedna: any failed worker fails the job) stops its script and clears its plan, so the
edges stop too. Every status change is published, retained, as one `JobStatus`.

Before a job starts, the controller holds it back while a Dataset, Model or training node it names is
missing (`_gate`; re-evaluated when that appears, even after the job Failed for it), and reports the
jobs of aggregation nodes never seen (`_foreign`).

Effects go only through `Port`: the engine never touches MQTT, processes or files, so tests drive it
with `cloud_aggregator.testing.MemoryPort` and a fake clock (every call takes ``now_s``). Inside, one
job is a few parts with one role each, sharing one `_context.JobContext`: the stage objects
(`_stages`), the aggregation script and the STARTING stage (`_script`), the intake of transfers
(`_intake`), the round engine (`_rounds`), committing rounds (`_commit`), crash recovery
(`_recovery`), the workers' reports (`_workers`), the status wording (`_status`) and secure aggregation's
phases (`_secagg`, with the round's record in `_secagg_record` and its unmasked close in `_secagg_close`).
"""

from cloud_aggregator.engine._checkpoint import Checkpoint, SpooledUpdate
from cloud_aggregator.engine._controller import Controller
from cloud_aggregator.engine._facts import JobFacts, JobSettings
from cloud_aggregator.engine._hier import Hierarchy, SiteFold
from cloud_aggregator.engine._job import Job
from cloud_aggregator.engine._kept import KeptState
from cloud_aggregator.engine._port import FinalModel, Port, ScriptRequest, ScriptSignal
from cloud_aggregator.engine._site import SiteJob, SitePort
from cloud_aggregator.engine._spill import SpillFile
from cloud_aggregator.engine._stages import Stage
from cloud_aggregator.engine._transfers import all_finite, decode_checked

__all__ = [
    "Checkpoint",
    "Controller",
    "FinalModel",
    "Hierarchy",
    "Job",
    "JobFacts",
    "JobSettings",
    "KeptState",
    "Port",
    "ScriptRequest",
    "ScriptSignal",
    "SiteFold",
    "SiteJob",
    "SitePort",
    "SpillFile",
    "SpooledUpdate",
    "Stage",
    "all_finite",
    "decode_checked",
]
