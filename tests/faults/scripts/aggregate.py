"""Aggregation worker for the fault tests: the example's, reading its settings from the job parameters."""

from cloud_aggregator import AggregationServer, Context

AggregationServer(
    aggregation=Context.get_parameters("aggregation_algorithm", "FedAvg"),
    exit_round=int(Context.get_parameters("exit_round", 3)),
    participants_count=int(Context.get_parameters("participants_count", 1)),
).start()
