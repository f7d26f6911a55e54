import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2`: two test processes share the cores, so each (and every process it starts,
    # which inherits this) runs torch on one thread instead of fighting over both
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

from service.testing import RedisServer, Service  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Slow files first, so that the last minutes of `-n 2` are not one long file on one
    worker. (`--dist loadfile` keeps a file on one worker; shared training runs are built once
    for all workers: tests/training/conftest.py.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service(redis_server, tmp_path_factory):
    """The API with one in-process worker on the built-in models, against a real Redis."""
    svc = Service(redis_server.url, log_dir=tmp_path_factory.mktemp("logs"), queue_prefix="main", torch_threads=1)
    yield svc
    svc.stop()
