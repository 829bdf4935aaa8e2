"""Provider tables and signing, in process: each provider's settings, Azure's endpoint spellings, and
Bedrock's SigV4 against a mock that recomputes every signature (wrong secret, region or service,
session tokens, API keys, ARNs, extra headers, refreshed credentials)."""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.credentials
import pytest

from shared.config import ConfigError, load_settings
from shared.errors import GatewayError, ProviderError
from workers.providers import KINDS, build_provider, provider_class
from workers.providers.bedrock import BedrockProvider, BedrockSettings, SigV4Auth
from workers.providers.foundry import FoundrySettings
from workers.providers.http import UpstreamHTTP

from .mocks.bedrock import MockBedrock
from .mocks.script import REPLY_PREFIX

ACCESS, SECRET, TOKEN = "AKIAUNITTESTKEY00001", "unit/secret+key", "session-token-123"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


# --- settings ----------------------------------------------------------------------------------------


def test_every_kind_names_a_provider_with_its_own_settings() -> None:
    for kind in KINDS:
        cls = provider_class(kind)
        assert cls.kind == kind
        assert cls.settings_type.__module__ == cls.__module__


@pytest.mark.parametrize("spelling", [
    "https://res.openai.azure.com", "https://res.openai.azure.com/", "https://res.openai.azure.com/openai",
    "https://res.openai.azure.com/openai/", "https://res.openai.azure.com/openai/v1/",
    "https://res.openai.azure.com/models",
])
def test_azure_endpoint_spellings_resolve_to_the_resource_root(spelling: str) -> None:
    settings = FoundrySettings(name="foundry", enabled=True, endpoint=spelling).resolve({"AZURE_FOUNDRY_API_KEY": "k"})

    assert settings.endpoint == "https://res.openai.azure.com"
    assert settings.api_key == "k" and settings.missing_credentials() is None


@pytest.mark.parametrize("host", ["res.services.ai.azure.com", "res.cognitiveservices.azure.com"])
def test_other_azure_hosts_are_kept(host: str) -> None:
    settings = FoundrySettings(name="f", enabled=True, endpoint=f"https://{host}/openai/").resolve({})

    assert settings.endpoint == f"https://{host}"
    assert settings.missing_credentials() == "set AZURE_FOUNDRY_API_KEY"


def test_bedrock_settings_from_environment(tmp_path) -> None:
    (tmp_path / "reactor.toml").write_text('[gateway.providers.bedrock]\nenabled = true\nregion = "eu-west-1"\n')
    env = {"AWS_REGION": "ap-south-1", "AWS_PROFILE": "prod", "AWS_BEARER_TOKEN_BEDROCK": "bedrock-api-key-xyz"}

    bedrock = load_settings(tmp_path / "reactor.toml", env).providers["bedrock"]

    assert (bedrock.region, bedrock.profile) == ("ap-south-1", "prod")
    assert bedrock.endpoint_url == "https://bedrock-runtime.ap-south-1.amazonaws.com"
    assert bedrock.secrets() == ("bedrock-api-key-xyz",)


def test_bedrock_unknown_key_is_named(tmp_path) -> None:
    (tmp_path / "reactor.toml").write_text('[gateway.providers.bedrock]\nenabled = true\napi_key_env = "X"\n')

    with pytest.raises(ConfigError, match="gateway.providers.bedrock.api_key_env: unknown setting"):
        load_settings(tmp_path / "reactor.toml", {})


# --- Bedrock signing against the mock -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mock():
    with MockBedrock(ACCESS, SECRET, region="us-west-2", models=(ARN,)) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch):
    """botocore's chain reads the process environment: give it only what a test sets."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return monkeypatch


def _chat(mock: MockBedrock, *, model: str = HAIKU, region: str = "us-west-2", headers: dict | None = None,
          bearer: str | None = None) -> Any:
    settings = BedrockSettings(name="bedrock", kind="bedrock", enabled=True, region=region, endpoint_url=mock.url,
                               headers=headers or {}, bearer_token=bearer).resolve({})

    async def run() -> Any:
        async with UpstreamHTTP() as http:
            provider = build_provider(settings, http, settings.secrets())
            return await provider.complete({"model": model, "messages": [{"role": "user", "content": "hi"}]})

    return asyncio.run(run())


def test_signed_request_is_accepted(mock, aws_env) -> None:
    assert _chat(mock)["choices"][0]["message"]["content"] == REPLY_PREFIX + "hi"


def test_arn_model_id_signs_and_arrives_intact(mock, aws_env) -> None:
    mock.reset()
    _chat(mock, model=ARN)

    assert mock.received[-1].model_id == ARN
    assert "%2F" in mock.received[-1].path and "%3A" in mock.received[-1].path


def test_extra_configured_headers_do_not_break_the_signature(mock, aws_env) -> None:
    mock.reset()
    _chat(mock, headers={"X-Team": "ml", "User-Agent": "team-app/1.0"})

    assert mock.received[-1].headers["x-team"] == "ml"


def test_wrong_secret_is_the_upstreams_403_without_the_secret(mock, aws_env) -> None:
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    with pytest.raises(ProviderError) as info:
        _chat(mock)

    assert info.value.status == 403 and not info.value.retryable
    assert "InvalidSignatureException" in info.value.message
    assert "not-the-secret" not in info.value.message


def test_wrong_region_is_refused(mock, aws_env) -> None:
    with pytest.raises(ProviderError) as info:
        _chat(mock, region="eu-west-1")

    assert info.value.status == 403


def test_session_token_is_signed_and_sent(aws_env) -> None:
    aws_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    with MockBedrock(ACCESS, SECRET, region="us-west-2", session_token=TOKEN) as strict:
        assert _chat(strict)["choices"][0]["finish_reason"] == "stop"
        assert strict.received[-1].headers["x-amz-security-token"] == TOKEN


def test_bedrock_api_key_is_a_bearer_token(aws_env) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    with MockBedrock(ACCESS, SECRET, bearer_token="bedrock-api-key-1") as server:
        assert _chat(server, bearer="bedrock-api-key-1")["choices"][0]["finish_reason"] == "stop"
        assert server.received[-1].headers["authorization"] == "Bearer bedrock-api-key-1"


def test_no_credentials_at_all_is_a_clear_start_up_error(aws_env) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(GatewayError, match="no AWS credentials"):
        asyncio.run(_build(BedrockSettings(name="bedrock", kind="bedrock", enabled=True).resolve({})))


async def _build(settings: BedrockSettings) -> BedrockProvider:
    async with UpstreamHTTP() as http:
        return build_provider(settings, http, ())  # type: ignore[return-value]


def test_credentials_are_frozen_anew_for_every_request() -> None:
    """Temporary credentials are refreshed by botocore: the signer must ask for them each time."""
    frozen = iter([botocore.credentials.ReadOnlyCredentials("AKIAONE0000000000001", "s1", None),
                   botocore.credentials.ReadOnlyCredentials("AKIATWO0000000000002", "s2", "tok")])

    class Rotating:
        def get_frozen_credentials(self):
            return next(frozen)

    import httpx

    auth = SigV4Auth(Rotating(), "us-east-1")
    first = next(auth.auth_flow(httpx.Request("POST", "https://h/model/x/converse", content=b"{}")))
    second = next(auth.auth_flow(httpx.Request("POST", "https://h/model/x/converse", content=b"{}")))

    assert "AKIAONE0000000000001/" in first.headers["authorization"]
    assert "AKIATWO0000000000002/" in second.headers["authorization"]
    assert second.headers["x-amz-security-token"] == "tok" and "x-amz-security-token" not in first.headers
