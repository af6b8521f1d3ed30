"""The worker script's environment: `schemas._worker_env` (Sedna's Context and BaseConfig)."""

from __future__ import annotations

import pytest

from schemas import BaseConfig, Context


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without the variables it reads."""
    names = ["exit_round", "EXIT_ROUND", "batch_size", "BATCH_SIZE", "participants_count", "PARTICIPANTS_COUNT"]
    names += ["epochs", "EPOCHS", "learning_rate", "LEARNING_RATE", "JOB_NAME", "NAMESPACE", "WORKER_NAME"]
    names += ["MODEL_URL", "MODEL_NAME", "PRETRAINED_MODEL_URL", "TRAIN_DATASET_URL"]
    names += ["TEST_DATASET_URL", "ORIGINAL_DATASET_URL"]
    for name in names:
        monkeypatch.delenv(name, raising=False)


def test_exact_name_wins_over_uppercase(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_parameters reads the exact name before the UPPERCASE one."""
    # Arrange
    monkeypatch.setenv("batch_size", "8")
    monkeypatch.setenv("BATCH_SIZE", "16")

    # Act
    value = Context.get_parameters("batch_size", 1)

    # Assert
    assert value == "8"


def test_uppercase_name_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_parameters finds PARTICIPANTS_COUNT when asked for participants_count."""
    # Arrange
    monkeypatch.setenv("PARTICIPANTS_COUNT", "2")

    # Act
    value = Context.get_parameters("participants_count", 1)

    # Assert
    assert value == "2"


@pytest.mark.parametrize(("default", "expected"), [(3, "3"), (0.001, "0.001"), ("FedAvg", "FedAvg"), (None, None)])
def test_default_is_returned_as_string(default: str | int | float | None, expected: str | None) -> None:
    """get_parameters returns the default, as a string, when neither name is set."""
    # Arrange
    name = "exit_round"

    # Act
    value = Context.get_parameters(name, default)

    # Assert
    assert value == expected


def test_empty_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty variable falls through to the UPPERCASE name, then the default, as in Sedna."""
    # Arrange
    monkeypatch.setenv("epochs", "")
    monkeypatch.setenv("learning_rate", "")
    monkeypatch.setenv("LEARNING_RATE", "0.01")

    # Act
    epochs = Context.get_parameters("epochs", 1)
    learning_rate = Context.get_parameters("learning_rate", 0.001)

    # Assert
    assert (epochs, learning_rate) == ("1", "0.01")


def test_values_are_returned_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A set value is returned verbatim (a string), for the script to convert."""
    # Arrange
    monkeypatch.setenv("learning_rate", " 1e-3 ")

    # Act
    value = Context.get_parameters("learning_rate", 0.001)

    # Assert
    assert value == " 1e-3 "


def test_base_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """BaseConfig's attributes are the worker's variables."""
    # Arrange
    env = {
        "JOB_NAME": "surface-defect-detection",
        "NAMESPACE": "default",
        "WORKER_NAME": "train-edge1",
        "MODEL_URL": "/model",
        "MODEL_NAME": "surface-defect-detection-model",
        "PRETRAINED_MODEL_URL": "/pretrained",
        "TRAIN_DATASET_URL": "/data/1.txt",
        "TEST_DATASET_URL": "/data/test.txt",
        "ORIGINAL_DATASET_URL": "/data/orig.txt",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # Act
    seen = {
        "JOB_NAME": BaseConfig.job_name,
        "NAMESPACE": BaseConfig.namespace,
        "WORKER_NAME": BaseConfig.worker_name,
        "MODEL_URL": BaseConfig.model_url,
        "MODEL_NAME": BaseConfig.model_name,
        "PRETRAINED_MODEL_URL": BaseConfig.pretrained_model_url,
        "TRAIN_DATASET_URL": BaseConfig.train_dataset_url,
        "TEST_DATASET_URL": BaseConfig.test_dataset_url,
        "ORIGINAL_DATASET_URL": BaseConfig.original_dataset_url,
    }

    # Assert
    assert seen == env


def test_base_config_reads_at_access_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """BaseConfig reads the environment when asked, not when imported."""
    # Arrange
    before = BaseConfig.train_dataset_url

    # Act
    monkeypatch.setenv("TRAIN_DATASET_URL", "/data/2.txt")
    after = BaseConfig.train_dataset_url

    # Assert
    assert (before, after) == (None, "/data/2.txt")


def test_base_config_unset_is_none() -> None:
    """Unset BaseConfig attributes are None, so `original or train` falls back as in Sedna's script."""
    # Arrange
    config = BaseConfig

    # Act
    root = config.original_dataset_url or config.train_dataset_url

    # Assert
    assert (config.model_url, config.test_dataset_url, root) == (None, None, None)
