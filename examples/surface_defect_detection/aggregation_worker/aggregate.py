"""Aggregation worker of the surface defect detection example (one, in the cloud).

Mirrors Sedna's ``examples/federated_learning/surface_defect_detection/aggregation_worker/
aggregate.py``; only the import changes (our ``cloud_aggregator`` replaces ``sedna``).
"""

from cloud_aggregator import AggregationServer, Context


def run_server():
    aggregation_algorithm = Context.get_parameters("aggregation_algorithm", "FedAvg")
    exit_round = int(Context.get_parameters("exit_round", 3))
    participants_count = int(Context.get_parameters("participants_count", 1))

    server = AggregationServer(
        aggregation=aggregation_algorithm,
        exit_round=exit_round,
        ws_size=20 * 1024 * 1024,
        participants_count=participants_count,
    )
    server.start()


if __name__ == "__main__":
    run_server()
