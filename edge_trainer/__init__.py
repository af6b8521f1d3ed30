"""The edge trainer: the node service that runs a job's training script, and the API that script uses.

In a training script (Sedna's API; the script runs as a child of ``fl-edge-trainer``)::

    from edge_trainer import BaseConfig, Context, FederatedLearning, TxtDataParse

    train_data = TxtDataParse(data_type="train", func=image_process)
    train_data.parse(BaseConfig.train_dataset_url)
    FederatedLearning(estimator=Estimator).train(train_data, epochs=int(Context.get_parameters("epochs", 1)))

On a node: ``fl-edge-trainer --node edge1 --root DIR`` (`EdgeService`, `main`). TensorFlow is never
imported by this package except, lazily, to save a Keras model at the end of a job.
"""

from edge_trainer._data import TxtDataParse, load_dataset, load_image, read_label_file
from edge_trainer._errors import (
    DatasetError,
    EdgeTrainerError,
    ModelSaveError,
    PathEscapeError,
    PlanRejectedError,
    WorkerError,
)
from edge_trainer._service import EdgeService
from edge_trainer._worker import FederatedLearning
from edge_trainer.cli import main
from schemas import BaseConfig, Context

__all__ = [
    "BaseConfig",
    "Context",
    "DatasetError",
    "EdgeService",
    "EdgeTrainerError",
    "FederatedLearning",
    "ModelSaveError",
    "PathEscapeError",
    "PlanRejectedError",
    "TxtDataParse",
    "WorkerError",
    "load_dataset",
    "load_image",
    "main",
    "read_label_file",
]
