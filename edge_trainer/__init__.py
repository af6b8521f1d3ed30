"""The edge trainer: the API a job's training script uses, and the node service that runs it.

In a training script (Sedna's API; the script runs as a child of ``fl-edge-trainer``)::

    from edge_trainer import BaseConfig, Context, FederatedLearning, TxtDataParse

    train_data = TxtDataParse(data_type="train", func=image_process)
    train_data.parse(BaseConfig.train_dataset_url)
    FederatedLearning(estimator=Estimator).train(train_data, epochs=int(Context.get_parameters("epochs", 1)))

This root is that API and never imports paho-mqtt; TensorFlow only lazily, to save a Keras model at
the end of a job. The per-job state machine is `edge_trainer.engine`; the process ``fl-edge-trainer``
(`edge_trainer.cli.main`) runs `edge_trainer.service.EdgeService`.
"""

from edge_trainer._data import LabeledSample, TxtDataParse, load_dataset, load_image, parse_label_line, read_label_file
from edge_trainer._errors import (
    DatasetError,
    EdgeTrainerError,
    ModelSaveError,
    OutboxError,
    PathEscapeError,
    PlanRejectedError,
    WorkerError,
)
from edge_trainer._model_io import SavedModel, save_model
from edge_trainer._privacy import privatise_update
from edge_trainer._worker import FederatedLearning
from schemas import BaseConfig, Context

__all__ = [
    "BaseConfig",
    "Context",
    "DatasetError",
    "EdgeTrainerError",
    "FederatedLearning",
    "LabeledSample",
    "ModelSaveError",
    "OutboxError",
    "PathEscapeError",
    "PlanRejectedError",
    "SavedModel",
    "TxtDataParse",
    "WorkerError",
    "load_dataset",
    "load_image",
    "parse_label_line",
    "privatise_update",
    "read_label_file",
    "save_model",
]
