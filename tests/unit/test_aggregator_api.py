"""The public API of `cloud_aggregator` and `cloud_aggregator.engine`, pinned: a change here is deliberate."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "cloud_aggregator": [
        "AggregationServer",
        "AggregationState",
        "AggregatorError",
        "AggregatorService",
        "Context",
        "ControllerError",
        "FedAvg",
        "Layout",
        "PublishFailedError",
        "StateError",
        "Strategy",
        "StrategyError",
        "UpdateRejectedError",
        "WorkerScriptError",
        "get_strategy",
        "main",
        "register_strategy",
        "strategy_names",
    ],
    "cloud_aggregator.engine": [
        "Checkpoint",
        "Controller",
        "Job",
        "Port",
        "ScriptRequest",
        "ScriptSignal",
        "SpooledUpdate",
        "Stage",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned_and_importable(module: str) -> None:
    loaded = importlib.import_module(module)
    assert loaded.__all__ == PUBLIC[module]
    for name in loaded.__all__:
        assert getattr(loaded, name) is not None, name


def test_every_error_is_an_aggregator_error() -> None:
    import cloud_aggregator as ca

    errors = ("ControllerError", "PublishFailedError", "StateError", "StrategyError", "UpdateRejectedError")
    for name in (*errors, "WorkerScriptError"):
        assert issubclass(getattr(ca, name), ca.AggregatorError), name
