"""A slow edge for benchmarks/async_wall.py: the example's train.py, each local training followed by a sleep.

Copied into the slow edge's ``/code`` next to the example's ``train.py`` and ``interface.py`` and named as
its ``scriptBootFile``. It runs the example's ``train.main()`` unchanged, with the estimator's ``train``
wrapped: after each local training it sleeps ``(slowdown - 1)`` times as long as that training took, so
the edge's local round lasts about ``slowdown`` times its own training time. The edge holds a share of
the same size as every other edge and trains on the same CPUs, so its own training time stands for a
normal edge's; sleeping (rather than burning CPU) models an edge whose own hardware is slow without
slowing the others down. ``slowdown`` is a training-worker parameter of the job (default 1: no sleep).
"""

import sys
import time

import interface

from edge_trainer import Context


class SlowEstimator(interface.Estimator):
    def train(self, *args, **kwargs):
        slowdown = float(Context.get_parameters("slowdown", 1))
        started = time.monotonic()
        history = super().train(*args, **kwargs)
        took = time.monotonic() - started
        pause = max(0.0, (slowdown - 1.0) * took)
        print(f"slow_train: trained in {took:.2f} s, sleeping {pause:.2f} s (slowdown {slowdown:g})", file=sys.stderr)
        time.sleep(pause)
        return history


# train.py does `from interface import Estimator` when it is imported: patch the module first.
interface.Estimator = SlowEstimator

import train  # noqa: E402

if __name__ == "__main__":
    train.main()
