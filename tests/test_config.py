from pathlib import Path

import pytest

from shared.config import (
    DEFAULT_BIND,
    ConfigError,
    Settings,
    find_config_file,
    load_settings,
    split_bind,
)
from workers.providers.openai_compat import OpenAISettings
from workers.providers.openrouter import OpenRouterSettings

OPENROUTER_DEFAULT = OpenRouterSettings(
    name="openrouter",
    kind="openrouter",
    enabled=True,
    base_url="https://openrouter.ai/api/v1",
    api_key=None,
    api_key_env="OPENROUTER_API_KEY",
)


def write(tmp_path: Path, text: str, name: str = "reactor.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./reactor.toml to pick up

    settings = load_settings(None, {})

    assert settings.source == "<defaults>"
    assert settings.bind == DEFAULT_BIND == "0.0.0.0:8004"
    assert settings.host_port == ("0.0.0.0", 8004)
    assert settings.redis_url is None
    assert settings.key_prefix == "reactor:"
    assert settings.data_dir == Path.home() / ".local" / "share" / "reactor"
    assert (settings.auth_url, settings.auth_issuer, settings.auth_audience) == (None, None, None)
    assert (settings.registry_overlay, settings.registry_url) == (None, None)
    assert settings.registry_optional is False
    assert settings.registry_timeout == 5.0
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert (settings.queue_timeout, settings.connect_timeout) == (10.0, 10.0)
    assert (settings.read_timeout, settings.request_timeout) == (300.0, 600.0)
    assert settings.heartbeat_interval == 2.0
    assert (settings.worker_concurrency, settings.queue_backlog) == (2000, 256)
    assert settings.poll_delay == 0.5
    assert settings.usage_retention_days == 400
    assert settings.providers == {"openrouter": OPENROUTER_DEFAULT}
    assert settings.enabled_providers == {"openrouter": OPENROUTER_DEFAULT}
    assert settings.secrets() == ()


def test_xdg_data_home_sets_the_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    settings = load_settings(None, {"XDG_DATA_HOME": "/srv/xdg"})

    assert settings.data_dir == Path("/srv/xdg/reactor")


def test_empty_file_gives_defaults_with_its_source(tmp_path: Path) -> None:
    path = write(tmp_path, "")

    settings = load_settings(path, {})

    assert settings.source == str(path)
    assert settings.bind == DEFAULT_BIND
    assert settings.providers == {"openrouter": OPENROUTER_DEFAULT}


# --- sections -------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["gateway", "ai"])
def test_either_section_name_is_read(tmp_path: Path, section: str) -> None:
    settings = load_text(
        tmp_path,
        f'[{section}]\nbind = "127.0.0.1:9000"\nqueue_timeout = 3\nkey_prefix = "rx:"\nmax_body_bytes = 1024\n',
    )

    assert settings.bind == "127.0.0.1:9000"
    assert settings.host_port == ("127.0.0.1", 9000)
    assert settings.queue_timeout == 3.0
    assert settings.key_prefix == "rx:"
    assert settings.max_body_bytes == 1024


def test_both_sections_merge_when_they_agree(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        '[gateway]\nbind = "127.0.0.1:9000"\nqueue_timeout = 4.0\n'
        '[ai]\nbind = "127.0.0.1:9000"\nredis_url = "redis://r:6379/1"\n',
    )

    assert settings.bind == "127.0.0.1:9000"
    assert settings.queue_timeout == 4.0
    assert settings.redis_url == "redis://r:6379/1"


def test_both_sections_disagreeing_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway]\nbind = "127.0.0.1:9000"\n[ai]\nbind = "127.0.0.1:9001"\n')

    assert "bind" in message
    assert "[gateway] and [ai]" in message


def test_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, "ai = 3\n")

    assert "ai: expected a table [ai]" in message


# --- the environment ------------------------------------------------------------------------------

FULL_FILE = """\
[gateway]
bind = "127.0.0.1:9000"
redis_url = "redis://file:6379/0"
auth_url = "https://file-identity.example"
"""


def test_env_overrides_the_file(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        FULL_FILE,
        {
            "REACTOR_AI_BIND": "[::1]:7001",
            "REDIS_URL": "redis://env:6379/2",
            "REACTOR_AI_AUTH_URL": "https://env-identity.example",
            "OPENROUTER_API_KEY": "sk-or-env-123456",
        },
    )

    assert settings.bind == "[::1]:7001"
    assert settings.host_port == ("::1", 7001)
    assert settings.redis_url == "redis://env:6379/2"
    assert settings.auth_url == "https://env-identity.example"
    assert settings.providers["openrouter"].api_key == "sk-or-env-123456"
    assert settings.secrets() == ("sk-or-env-123456",)


def test_file_values_stand_without_env(tmp_path: Path) -> None:
    settings = load_text(tmp_path, FULL_FILE)

    assert settings.bind == "127.0.0.1:9000"
    assert settings.redis_url == "redis://file:6379/0"
    assert settings.auth_url == "https://file-identity.example"
    assert settings.providers["openrouter"].api_key is None


def test_empty_env_values_do_not_override(tmp_path: Path) -> None:
    settings = load_text(tmp_path, FULL_FILE, {"REACTOR_AI_BIND": "", "REDIS_URL": "", "REACTOR_AI_AUTH_URL": ""})

    assert settings.bind == "127.0.0.1:9000"
    assert settings.redis_url == "redis://file:6379/0"
    assert settings.auth_url == "https://file-identity.example"


def test_bad_bind_from_env_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError, match=r"^REACTOR_AI_BIND: expected HOST:PORT .* got 'localhost'$"):
        load_settings(None, {"REACTOR_AI_BIND": "localhost"})


def test_foundry_endpoint_and_aws_region_from_env(tmp_path: Path) -> None:
    text = (
        '[gateway.providers.foundry]\nendpoint = "https://file.azure.example"\n'
        '[gateway.providers.bedrock]\nregion = "eu-west-1"\n'
    )

    from_file = load_text(tmp_path, text)
    from_env = load_text(
        tmp_path,
        text,
        {"AZURE_FOUNDRY_ENDPOINT": "https://env.azure.example/", "AWS_REGION": "ap-south-1",
         "AZURE_FOUNDRY_API_KEY": "azkey-123456"},
    )

    assert from_file.providers["foundry"].endpoint == "https://file.azure.example"
    assert from_file.providers["bedrock"].region == "eu-west-1"
    assert from_env.providers["foundry"].endpoint == "https://env.azure.example"
    assert from_env.providers["foundry"].api_key == "azkey-123456"
    assert from_env.providers["bedrock"].region == "ap-south-1"
    # Cloud providers parse but stay off until asked; OpenRouter is still there by default.
    assert from_env.providers["foundry"].enabled is False
    assert from_env.providers["bedrock"].enabled is False
    assert set(from_env.enabled_providers) == {"openrouter"}


def test_bedrock_region_defaults_to_us_east_1(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[gateway.providers.bedrock]\nenabled = false\n")

    assert settings.providers["bedrock"].region == "us-east-1"
    assert settings.providers["bedrock"].kind == "bedrock"


def test_reactor_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, '[gateway]\nbind = "127.0.0.1:9100"\n', name="elsewhere.toml")

    settings = load_settings(None, {"REACTOR_CONFIG": str(path)})

    assert settings.source == str(path)
    assert settings.bind == "127.0.0.1:9100"


def test_explicit_path_wins_over_reactor_config(tmp_path: Path) -> None:
    explicit = write(tmp_path, '[gateway]\nbind = "127.0.0.1:9200"\n', name="explicit.toml")
    other = write(tmp_path, '[gateway]\nbind = "127.0.0.1:9300"\n', name="other.toml")

    settings = load_settings(explicit, {"REACTOR_CONFIG": str(other)})

    assert settings.source == str(explicit)
    assert settings.bind == "127.0.0.1:9200"


def test_reactor_toml_in_cwd_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, '[gateway]\nbind = "127.0.0.1:9400"\n')

    assert find_config_file(None, {}, tmp_path) == path
    assert find_config_file(None, {}, tmp_path / "missing") is None
    assert load_settings(None, {}).bind == "127.0.0.1:9400"


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=f"^{path}: cannot read the config file"):
        load_settings(path, {})


# --- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)  # must not be what the paths are relative to
    path = write(conf_dir, '[gateway]\nregistry_overlay = "models/ai-models.toml"\ndata_dir = "data"\n')

    settings = load_settings(path, {})

    assert settings.registry_overlay == conf_dir / "models" / "ai-models.toml"
    assert settings.data_dir == conf_dir / "data"


def test_absolute_overlay_path_is_kept(tmp_path: Path) -> None:
    overlay = tmp_path / "abs" / "ai-models.toml"

    settings = load_text(tmp_path, f'[gateway]\nregistry_overlay = "{overlay}"\n')

    assert settings.registry_overlay == overlay


def test_overlay_and_url_together_is_an_error(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[gateway]\nregistry_overlay = "a.toml"\nregistry_url = "https://example.com/a.toml"\n'
    )

    assert "gateway.registry_url" in message


# --- providers ------------------------------------------------------------------------------------


def test_generic_openai_provider(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        '[gateway.providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:8000/v1/"\n'
        'api_key_env = "LOCAL_KEY"\nheaders = { "X-Team" = "ml" }\n',
        {"LOCAL_KEY": "local-secret-1"},
    )

    assert settings.providers["local"] == OpenAISettings(
        name="local",
        kind="openai",
        enabled=True,
        base_url="http://127.0.0.1:8000/v1",
        api_key="local-secret-1",
        api_key_env="LOCAL_KEY",
        headers={"X-Team": "ml"},
    )
    assert set(settings.enabled_providers) == {"local", "openrouter"}
    assert settings.secrets() == ("local-secret-1",)


def test_generic_provider_key_env_unset_gives_no_key(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, '[gateway.providers.local]\nkind = "openai"\nbase_url = "http://h/v1"\napi_key_env = "LOCAL_KEY"\n'
    )

    assert settings.providers["local"].api_key is None
    assert settings.providers["local"].api_key_env == "LOCAL_KEY"


def test_endpoint_is_an_alias_of_base_url(tmp_path: Path) -> None:
    settings = load_text(tmp_path, '[gateway.providers.local]\nkind = "openai"\nendpoint = "https://up.example/v1"\n')

    assert settings.providers["local"].base_url == "https://up.example/v1"


def test_endpoint_and_base_url_disagreeing_is_an_error(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        '[gateway.providers.local]\nkind = "openai"\nbase_url = "https://a.example"\nendpoint = "https://b.example"\n',
    )

    assert "gateway.providers.local.endpoint" in message


def test_openrouter_table_can_disable_it(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[gateway.providers.openrouter]\nenabled = false\n")

    assert settings.providers["openrouter"].enabled is False
    assert settings.enabled_providers == {}


# --- errors name the file and the key -------------------------------------------------------------


def test_bad_toml(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[gateway]\nbind = \n")

    assert "not valid TOML" in message
    assert "line 2" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[gateway]\nbogus = 1\n")

    assert "gateway.bogus" in message
    assert "unknown setting" in message


def test_unknown_key_in_ai_section_is_named_as_gateway(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[ai]\nbogus = 1\n")

    assert "gateway.bogus" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway]\nqueue_timeout = "x"\n')

    assert "gateway.queue_timeout" in message
    assert "Expected `float`, got `str`" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("queue_timeout", "-1"), ("read_timeout", "0"), ("heartbeat_interval", "-0.5"), ("poll_delay", "0")],
)
def test_non_positive_timeouts(tmp_path: Path, key: str, value: str) -> None:
    message = config_error(tmp_path, f"[gateway]\n{key} = {value}\n")

    assert f"gateway.{key}: expected a positive number of seconds" in message


@pytest.mark.parametrize("key", ["max_body_bytes", "worker_concurrency", "usage_retention_days"])
def test_non_positive_integers(tmp_path: Path, key: str) -> None:
    message = config_error(tmp_path, f"[gateway]\n{key} = 0\n")

    assert f"gateway.{key}: expected a positive integer" in message


@pytest.mark.parametrize("prefix", ["", "re actor:"])
def test_bad_key_prefix(tmp_path: Path, prefix: str) -> None:
    message = config_error(tmp_path, f'[gateway]\nkey_prefix = "{prefix}"\n')

    assert "gateway.key_prefix" in message


@pytest.mark.parametrize("bind", ["nope", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_bind(tmp_path: Path, bind: str) -> None:
    message = config_error(tmp_path, f'[gateway]\nbind = "{bind}"\n')

    assert f"gateway.bind: expected HOST:PORT such as {DEFAULT_BIND}, got {bind!r}" in message


def test_split_bind() -> None:
    assert split_bind(":8004") == ("0.0.0.0", 8004)
    assert split_bind("[::]:80") == ("::", 80)
    with pytest.raises(ConfigError, match="^REACTOR_AI_BIND: "):
        split_bind("8004")


def test_unknown_provider_kind(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers.x]\nkind = "grpc"\n')

    assert "gateway.providers.x.kind" in message
    assert "got 'grpc'" in message


def test_generic_provider_without_kind(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers.local]\nbase_url = "http://h/v1"\n')

    assert "gateway.providers.local.kind: expected one of openrouter, openai, bedrock, foundry" in message


def test_bad_provider_name(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers."my host"]\nkind = "openai"\nbase_url = "http://h"\n')

    assert "gateway.providers.my host" in message


def test_openai_kind_without_base_url(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers.local]\nkind = "openai"\napi_key_env = "LOCAL_KEY"\n')

    assert "gateway.providers.local.base_url" in message


def test_base_url_must_be_http(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers.local]\nkind = "openai"\nbase_url = "ftp://h/v1"\n')

    assert "gateway.providers.local.base_url: expected an http(s) URL, got 'ftp://h/v1'" in message


def test_unknown_key_in_provider_table_names_that_table(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, '[gateway.providers.local]\nkind = "openai"\nbase_url = "http://h"\nbogus = 2\n'
    )

    assert "gateway.providers.local.bogus" in message


def test_wrong_type_in_provider_table_names_the_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[gateway.providers.openrouter]\nenabled = "yes"\n')

    assert "gateway.providers.openrouter.enabled" in message


def test_queue_backlog_may_be_zero_not_negative(tmp_path: Path) -> None:
    (tmp_path / "reactor.toml").write_text("[gateway]\nqueue_backlog = 0\n")
    assert load_settings(tmp_path / "reactor.toml", env={}).queue_backlog == 0
    message = config_error(tmp_path, "[gateway]\nqueue_backlog = -1\n")
    assert "gateway.queue_backlog: expected a number of jobs, 0 or more" in message
