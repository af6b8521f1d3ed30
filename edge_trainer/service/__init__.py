"""`fl-edge-trainer`, the process: the service loop, the uploads and the node's MQTT identity.

`EdgeService` runs each job's `engine.EdgeJob` on one logic thread over one MQTT session, its training
script under `runtime.ScriptSupervisor` and its uploads through the outbox (`Uploads`).
"""

from edge_trainer.service._service import EdgeService, Event
from edge_trainer.service._uploads import OutboxWritten, ResendDone, UploadEvent, Uploads, UploadWiring

__all__ = ["EdgeService", "Event", "OutboxWritten", "ResendDone", "UploadEvent", "UploadWiring", "Uploads"]
