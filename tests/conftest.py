import pytest

from service.testing import RedisServer, Service


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
