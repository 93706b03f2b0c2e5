"""Fixtures of the ``cluster`` tests: the 3-node RabbitMQ cluster of ``scripts/rabbit-cluster``.

The session fixture starts the cluster when it is not running and stops it at the end; a cluster
that was already running (a developer iterating) is left running. Tests are skipped with the
reason when Debian's rabbitmq-server is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[Cluster]:
    if not Cluster.available():
        pytest.skip(
            "rabbitmq-server is not installed (apt-get install rabbitmq-server): the cluster "
            "tests need scripts/rabbit-cluster's three local nodes"
        )
    c = Cluster()
    was_running = c.running()
    if not was_running:
        c.start()
    try:
        yield c
    finally:
        if not was_running:
            c.stop()


@pytest.fixture
def cluster(cluster_session: Cluster) -> Iterator[Cluster]:
    """The cluster with all three nodes up; a node a test stopped is started again after it."""
    cluster_session.ensure_all_up()
    yield cluster_session
    cluster_session.ensure_all_up()
