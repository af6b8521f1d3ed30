"""The environment a worker script runs in: Sedna's variable names, read through Sedna's helpers.

A node service starts the job's script with these variables set, as Sedna's controller sets them on
a pod, plus every ``parameters`` entry of the workerSpec under its own key. Scripts read them the
Sedna way (``Context.get_parameters("exit_round", 3)``, ``BaseConfig.train_dataset_url``), so the
example's scripts port by changing their import lines only.
"""

from __future__ import annotations

import os

__all__ = ["BaseConfig", "Context", "WorkerEnv"]


class WorkerEnv:
    """The names of the variables a node service sets for its worker scripts (Sedna's, then this system's)."""

    # Set by the node service for every worker.
    JOB_NAME = "JOB_NAME"
    NAMESPACE = "NAMESPACE"
    WORKER_NAME = "WORKER_NAME"
    NODE_NAME = "NODE_NAME"
    MODEL_URL = "MODEL_URL"
    MODEL_NAME = "MODEL_NAME"
    MODEL_FORMAT = "MODEL_FORMAT"
    PARTICIPANTS_COUNT = "PARTICIPANTS_COUNT"
    PRETRAINED_MODEL_URL = "PRETRAINED_MODEL_URL"
    # Training workers only.
    TRAIN_DATASET_URL = "TRAIN_DATASET_URL"
    DATASET_NAME = "DATASET_NAME"
    # Read by scripts when set by the user (Sedna's library knobs).
    TEST_DATASET_URL = "TEST_DATASET_URL"
    ORIGINAL_DATASET_URL = "ORIGINAL_DATASET_URL"
    # This system's own: the node's root folder, the job run (JobPlan.uid) and the worker channel's fd.
    NODE_ROOT = "FL_NODE_ROOT"
    JOB_UID = "FL_JOB_UID"
    WORKER_FD = "FL_WORKER_FD"
    # A node setting the scripts inherit from their service: model versions kept per Model url (runtime.keep_versions).
    MODEL_KEEP_VERSIONS = "FL_MODEL_KEEP_VERSIONS"


class Context:
    """Sedna's ``sedna.common.config.Context``: parameters by exact name, then by UPPERCASE name."""

    @staticmethod
    def get_parameters(param: str, default: str | int | float | None = None) -> str | None:
        # As Sedna's `parameters.get(param) or parameters.get(param.upper())`: an empty value counts
        # as unset. Returning "" (before test review) made `int(get_parameters("epochs", 1))` fail
        # where Sedna's scripts get the default. Unlike Sedna, the default comes back as a string.
        value = os.environ.get(param) or os.environ.get(param.upper())
        if not value:
            return None if default is None else str(default)
        return value


class _FromEnv:
    """A read-only class attribute whose value is the worker variable `name`, read when asked."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, cls: object, meta: type | None = None) -> str | None:
        return os.environ.get(self.name)

    def __set__(self, cls: object, value: object) -> None:
        # A script reads what its process was given; it cannot change it through BaseConfig.
        raise AttributeError(f"BaseConfig attributes are read-only (they read ${self.name})")


class _BaseConfigMeta(type):
    # On the metaclass, so that they are attributes of the class itself (`BaseConfig.train_dataset_url`, as
    # in Sedna) and read the environment when asked: a script sees what its process was given.
    job_name = _FromEnv(WorkerEnv.JOB_NAME)
    namespace = _FromEnv(WorkerEnv.NAMESPACE)
    worker_name = _FromEnv(WorkerEnv.WORKER_NAME)
    model_url = _FromEnv(WorkerEnv.MODEL_URL)
    model_name = _FromEnv(WorkerEnv.MODEL_NAME)
    pretrained_model_url = _FromEnv(WorkerEnv.PRETRAINED_MODEL_URL)
    train_dataset_url = _FromEnv(WorkerEnv.TRAIN_DATASET_URL)
    test_dataset_url = _FromEnv(WorkerEnv.TEST_DATASET_URL)
    original_dataset_url = _FromEnv(WorkerEnv.ORIGINAL_DATASET_URL)


class BaseConfig(metaclass=_BaseConfigMeta):
    """Sedna's ``sedna.common.config.BaseConfig``: the worker's URLs and names as class attributes."""
