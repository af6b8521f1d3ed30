"""Fixtures for the bridged layout (tests/helpers/sites.py): a cloud broker and two site brokers, each site's
bridge through its own cuttable WAN link."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.helpers.sites import SiteBed

# The default layout: one edge behind each site broker, the aggregator on the cloud broker.
TWO_SITES: dict[str, list[str]] = {"site-a": ["edge1"], "site-b": ["edge2"]}

SiteBedFactory = Callable[..., SiteBed]


@pytest.fixture
def site_bed_factory(tmp_path: Path) -> Iterator[SiteBedFactory]:
    """``make(sites=TWO_SITES, **SiteBed options)``: a started SiteBed (bridges up); stopped at teardown."""
    made: list[SiteBed] = []

    def make(sites: Mapping[str, Sequence[str]] | None = None, **options: object) -> SiteBed:
        bed = SiteBed(tmp_path, sites or TWO_SITES, **options)  # type: ignore[arg-type]
        made.append(bed)
        return bed.start()

    yield make
    for bed in made:
        bed.stop()


@pytest.fixture
def site_bed(site_bed_factory: SiteBedFactory) -> SiteBed:
    """The default two-site bed, started: cloud0 on the cloud broker, edge1 at site-a, edge2 at site-b."""
    return site_bed_factory()
