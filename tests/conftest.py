"""Fixtures shared by the integration tests: the real Redis, the mock upstreams and a gateway."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from .gateway_proc import LOCAL_KEY, UPSTREAM_KEY, RunningGateway, mock_upstream_process
from .cloud import AWS_ACCESS_KEY, AWS_SECRET_KEY, AZURE_KEY, cloud_overlay
from .mocks.azure import MockAzure
from .mocks.bedrock import MockBedrock
from .mocks.openai import MockUpstream

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.exit(f"integration tests need a Redis at {REDIS_URL} ({exc}); .ci/run starts one", returncode=3)
    return REDIS_URL


@pytest.fixture(scope="session")
def openrouter_mock():
    with MockUpstream(api_key=UPSTREAM_KEY, flavour="openrouter") as mock:
        yield mock


@pytest.fixture(scope="session")
def local_mock():
    with MockUpstream(api_key=LOCAL_KEY, flavour="openai") as mock:
        yield mock


@pytest.fixture
def process_upstream():
    """The OpenAI-flavoured mock in a process of its own, for loads that would starve one sharing
    the test's process; its base URL, key LOCAL_KEY."""
    with mock_upstream_process() as url:
        yield url


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gw = RunningGateway(tmp_path_factory.mktemp("gateway"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                        openrouter_mock.url, local_mock.url)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def fresh_gateway(tmp_path, redis_url, openrouter_mock, local_mock):
    """A gateway of its own, for tests that kill or restart parts of it."""
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url)
    gw.start()
    yield gw
    gw.stop()


# --- every provider at once: the mocks of Bedrock and Azure beside the OpenAI-compatible ones -------


@pytest.fixture(scope="session")
def bedrock_mock():
    with MockBedrock(AWS_ACCESS_KEY, AWS_SECRET_KEY, region="eu-central-1") as mock:
        yield mock


@pytest.fixture(scope="session")
def azure_mock():
    with MockAzure(AZURE_KEY) as mock:
        yield mock


@pytest.fixture(scope="session")
def cloud_gateway(tmp_path_factory, redis_url, openrouter_mock, local_mock, bedrock_mock, azure_mock):
    providers = f'''
[gateway.providers.bedrock]
enabled = true
region = "eu-central-1"
endpoint_url = "{bedrock_mock.url}"

[gateway.providers.foundry]
enabled = true
# Pasted with Azure's `/openai/` suffix, as people do: the provider normalises it.
endpoint = "{azure_mock.endpoint}/openai/"
'''
    env = {
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
        # Nothing of this machine's AWS set-up may take part.
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AZURE_FOUNDRY_API_KEY": AZURE_KEY,
    }
    gateway = RunningGateway(tmp_path_factory.mktemp("conformance"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url, providers=providers, overlay=cloud_overlay(), env=env,
                             worker_providers=("openrouter", "local", "bedrock", "foundry"))
    gateway.start()
    yield gateway
    gateway.stop()


