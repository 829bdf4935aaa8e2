import asyncio
import re
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shared.registry import (
    DEFAULT_CREATED,
    DEFAULTS_SOURCE,
    STRATEGIES,
    Alias,
    Model,
    Registry,
    RegistryError,
    Route,
    fetch_overlay,
    load_registry,
    parse_toml,
    read_overlay_file,
)
from shared.registry.load import _merge_sources

REPO_ROOT = Path(__file__).resolve().parent.parent

# The product page's "Use a routing alias" snippet, byte for byte: its headers are not valid TOML.
PAGE_SNIPPET = """\
# ai-models.toml (project overlay)
[aliases.reasoning/cheapest]
strategy = "cheapest"
targets = ["gpt-4o-mini", "claude-3-haiku"]

[aliases.reasoning/best]
strategy = "first"
targets = ["gpt-4", "claude-3-5-sonnet"]
"""

DOCUMENTED_MODELS = (
    "gpt-4o-mini",
    "gpt-4",
    "gpt-4o",
    "claude-3-5-sonnet",
    "claude-3-haiku",
    "text-embedding-3-small",
    "text-embedding-3-large",
)


def targets(registry: Registry, name: str) -> list[str]:
    return [model.id for model in registry.lookup(name)[1]]


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_include_the_documented_models() -> None:
    registry = load_registry()

    assert len(registry.models) >= 14
    for model_id in DOCUMENTED_MODELS:
        assert model_id in registry.models, model_id
    assert any(model_id.startswith("llama-") for model_id in registry.models)
    assert any(model_id.startswith("mistral-") for model_id in registry.models)
    assert registry.aliases == {}


def test_defaults_have_sane_prices_and_routes() -> None:
    for model in load_registry().models.values():
        assert 0 < model.input_price_per_mtok < 100, model.id
        assert 0 < model.context_window <= 2_000_000, model.id
        if model.cached_input_price_per_mtok is not None:
            assert model.cached_input_price_per_mtok < model.input_price_per_mtok, model.id
        assert model.routes, model.id
        for route in model.routes:
            assert route.provider in ("openrouter", "bedrock", "foundry"), route
            if route.provider == "openrouter":
                assert route.model.count("/") == 1, route.model
            elif route.provider == "bedrock":
                assert re.fullmatch(r"([a-z]+\.)?[a-z]+\.[a-z0-9.\-]+(:\d+)?", route.model), route.model
            else:
                assert "/" not in route.model, route.model
        # A gateway with one OpenRouter key serves every model but Bedrock's own embedders.
        providers = {route.provider for route in model.routes}
        assert "openrouter" in providers or providers == {"bedrock"}, model.id
        if model.supports("embeddings"):
            assert model.capabilities == {"embeddings"}, model.id
            assert model.output_price_per_mtok == 0.0, model.id
        else:
            assert {"chat", "streaming"} <= model.capabilities, model.id
            assert model.output_price_per_mtok >= model.input_price_per_mtok, model.id


def test_default_model_values() -> None:
    models = load_registry().models

    mini = models["gpt-4o-mini"]
    assert (mini.owned_by, mini.context_window) == ("openai", 128000)
    assert (mini.input_price_per_mtok, mini.output_price_per_mtok) == (0.15, 0.60)
    assert mini.cached_input_price_per_mtok == 0.075
    assert mini.routes == (Route(provider="foundry", model="gpt-4o-mini"),
                           Route(provider="openrouter", model="openai/gpt-4o-mini"))
    assert mini.capabilities == {"chat", "tools", "vision", "streaming"}
    assert models["claude-3-5-sonnet"].routes[-1].model == "anthropic/claude-3.5-sonnet"
    assert models["claude-3-haiku"].routes == (Route("bedrock", "anthropic.claude-3-haiku-20240307-v1:0"),
                                               Route("openrouter", "anthropic/claude-3-haiku"))
    assert models["titan-embed-text-v2"].routes == (Route("bedrock", "amazon.titan-embed-text-v2:0"),)
    assert models["claude-3-haiku"].input_price_per_mtok == 0.25
    assert models["gpt-4"].output_price_per_mtok == 60.0
    assert models["text-embedding-3-small"].input_price_per_mtok == 0.02


def test_lookup() -> None:
    registry = load_registry()

    alias, models = registry.lookup("gpt-4o")
    assert alias is None
    assert models == [registry.models["gpt-4o"]]
    assert registry.lookup("gpt-5-ultra") == (None, [])


def test_registry_is_immutable() -> None:
    registry = load_registry()

    with pytest.raises(TypeError):
        registry.models["x"] = registry.models["gpt-4"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        registry.models = {}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        registry.models["gpt-4"].input_price_per_mtok = 0.0  # type: ignore[misc]


def test_registry_constructor_checks_aliases() -> None:
    model = Model(id="m", owned_by="me", routes=(Route("local", "m"),), capabilities=frozenset({"chat"}))

    assert model.created == DEFAULT_CREATED
    assert model.supports("chat") and not model.supports("vision")
    assert Registry([model], [Alias("a", "first", ("m",))]).lookup("a")[1] == [model]
    with pytest.raises(RegistryError, match=r'aliases\."a"\.targets\[0\]: unknown model \'n\''):
        Registry([model], [Alias("a", "first", ("n",))])
    with pytest.raises(RegistryError, match="unknown strategy 'best'"):
        Registry([model], [Alias("a", "best", ("m",))])
    with pytest.raises(RegistryError, match="duplicate model id"):
        Registry([model, model])


# --- the page's snippet and the header rewrite ------------------------------------------------------


def test_page_snippet_parses_verbatim() -> None:
    assert parse_toml(PAGE_SNIPPET, "ai-models.toml") == {
        "aliases": {
            "reasoning/cheapest": {"strategy": "cheapest", "targets": ["gpt-4o-mini", "claude-3-haiku"]},
            "reasoning/best": {"strategy": "first", "targets": ["gpt-4", "claude-3-5-sonnet"]},
        }
    }


def test_page_snippet_aliases_resolve_in_order() -> None:
    registry = load_registry(PAGE_SNIPPET, "ai-models.toml")

    alias, models = registry.lookup("reasoning/cheapest")
    assert alias == Alias(name="reasoning/cheapest", strategy="cheapest", targets=("gpt-4o-mini", "claude-3-haiku"))
    assert [model.id for model in models] == ["gpt-4o-mini", "claude-3-haiku"]
    alias, models = registry.lookup("reasoning/best")
    assert alias is not None and alias.strategy == "first"
    assert [model.id for model in models] == ["gpt-4", "claude-3-5-sonnet"]
    assert set(registry.aliases) == {"reasoning/cheapest", "reasoning/best"}


def test_repo_overlay_holds_the_page_snippet_and_loads() -> None:
    path = REPO_ROOT / "ai-models.toml"
    text = read_overlay_file(path)

    assert PAGE_SNIPPET in text
    registry = load_registry(text, str(path))
    assert targets(registry, "reasoning/cheapest") == ["gpt-4o-mini", "claude-3-haiku"]
    assert len(registry.models) == len(load_registry().models)


def test_commented_example_in_repo_overlay_is_valid() -> None:
    text = read_overlay_file(REPO_ROOT / "ai-models.toml")
    example = text[text.index('# [models."qwen2.5-7b-instruct"]') :]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())

    model = load_registry(uncommented).models["qwen2.5-7b-instruct"]
    assert model.routes == (Route(provider="local", model="Qwen/Qwen2.5-7B-Instruct"),)
    assert model.owned_by == "qwen"


@pytest.mark.parametrize(
    "header",
    ['[aliases."reasoning/cheapest"]', "[aliases.'reasoning/cheapest']", "[ aliases . reasoning/cheapest ]  # hi"],
)
def test_other_header_spellings(header: str) -> None:
    text = f'{header}\nstrategy = "cheapest"\ntargets = ["gpt-4o-mini", "claude-3-haiku"]\n'

    registry = load_registry(text)
    assert targets(registry, "reasoning/cheapest") == ["gpt-4o-mini", "claude-3-haiku"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Valid headers are left alone.
        ("[models.gpt-4o]\n[models.\"gpt-4.1\"]", {"models": {"gpt-4o": {}, "gpt-4.1": {}}}),
        ('[a."x]y".b/c]', {"a": {"x]y": {"b/c": {}}}}),
        ("[[a.b/c]]\nk = 1\n[[a.b/c]]\nk = 2", {"a": {"b/c": [{"k": 1}, {"k": 2}]}}),
        ("[a.b\\c]\r\nk = 1\r\n", {"a": {"b\\c": {"k": 1}}}),
        # A line starting with `[` inside a multi-line string or array is a value, not a header.
        ('s = """\n[a.b/c]\n"""', {"s": "[a.b/c]\n"}),
        ("s = '''x\n[a.b/c]'''", {"s": "x\n[a.b/c]"}),
        ('s = """a\\"""\n[a.b/c]"""', {"s": 'a"""\n[a.b/c]'}),
        ("x = [\n[+1],\n[+2]\n]\n[t.u/v]", {"x": [[1], [2]], "t": {"u/v": {}}}),
        ("x = [ # [\n  \"]\",\n]\n[t.u/v]", {"x": ["]"], "t": {"u/v": {}}}),
    ],
)
def test_header_rewrite(text: str, expected: dict) -> None:
    assert parse_toml(text, "t.toml") == expected


@pytest.mark.parametrize("text", ["[a.b c]", "[a.b/c", "[a.b/c] x = 1", '[a.b"c]'])
def test_header_rewrite_leaves_other_mistakes_to_tomllib(text: str) -> None:
    with pytest.raises(RegistryError, match=r"^t\.toml: invalid TOML"):
        parse_toml(text, "t.toml")


def test_toml_errors_keep_their_line_numbers() -> None:
    with pytest.raises(RegistryError, match=r"line 3"):
        parse_toml('[aliases.a/b]\nstrategy = "first"\ntargets = [1 2]\n', "t.toml")


# --- merging --------------------------------------------------------------------------------------


def test_partial_override_changes_only_the_given_fields() -> None:
    overlay = '[models."gpt-4o"]\ninput_price_per_mtok = 2\n'
    default = load_registry().models["gpt-4o"]

    model = load_registry(overlay).models["gpt-4o"]
    assert model.input_price_per_mtok == 2.0
    assert model == msgspec.structs.replace(default, input_price_per_mtok=2.0)


def test_partial_override_of_routes_replaces_the_list() -> None:
    overlay = """
[models."claude-3-haiku"]
routes = [
    { provider = "bedrock", model = "anthropic.claude-3-haiku-20240307-v1:0" },
    { provider = "openrouter", model = "anthropic/claude-3-haiku" },
]
"""
    model = load_registry(overlay).models["claude-3-haiku"]

    assert [route.provider for route in model.routes] == ["bedrock", "openrouter"]
    assert model.routes[0].model == "anthropic.claude-3-haiku-20240307-v1:0"
    assert model.input_price_per_mtok == 0.25


def test_complete_table_replaces_the_model() -> None:
    overlay = """
[models."gpt-4o"]
owned_by = "azure"
context_window = 64000
input_price_per_mtok = 5.0
output_price_per_mtok = 15.0
capabilities = ["chat"]
routes = [{ provider = "foundry", model = "gpt-4o" }]
"""
    model = load_registry(overlay).models["gpt-4o"]

    assert model == Model(
        id="gpt-4o",
        owned_by="azure",
        routes=(Route("foundry", "gpt-4o"),),
        capabilities=frozenset({"chat"}),
        context_window=64000,
        input_price_per_mtok=5.0,
        output_price_per_mtok=15.0,
    )


def test_new_model_takes_documented_defaults() -> None:
    overlay = """
[models."qwen2.5-7b-instruct"]
capabilities = ["chat", "streaming"]
routes = [{ provider = "local", model = "Qwen/Qwen2.5-7B-Instruct" }]

[aliases.local/any]
strategy = "random"
targets = ["qwen2.5-7b-instruct", "llama-3.1-8b-instruct"]
"""
    registry = load_registry(overlay)

    model = registry.models["qwen2.5-7b-instruct"]
    assert model.owned_by == "local"
    assert (model.context_window, model.input_price_per_mtok, model.output_price_per_mtok) == (0, 0.0, 0.0)
    assert model.cached_input_price_per_mtok is None and model.latency_ms_hint is None
    assert model.created == DEFAULT_CREATED
    assert targets(registry, "local/any") == ["qwen2.5-7b-instruct", "llama-3.1-8b-instruct"]
    assert list(registry.models)[-1] == "qwen2.5-7b-instruct"


def test_later_aliases_replace_earlier_ones_by_name() -> None:
    defaults = (REPO_ROOT / "shared" / "default_models.toml").read_text()
    replacing = '[aliases.reasoning/best]\nstrategy = "fastest"\ntargets = ["o3-mini"]\n'

    registry = _merge_sources([(defaults, DEFAULTS_SOURCE), (PAGE_SNIPPET, "one.toml"), (replacing, "two.toml")])
    assert registry.aliases["reasoning/best"] == Alias("reasoning/best", "fastest", ("o3-mini",))
    assert targets(registry, "reasoning/cheapest") == ["gpt-4o-mini", "claude-3-haiku"]


def test_all_strategies_accepted() -> None:
    overlay = "".join(f'[aliases.s/{s}]\nstrategy = "{s}"\ntargets = ["gpt-4o"]\n' for s in STRATEGIES)

    assert {alias.strategy for alias in load_registry(overlay).aliases.values()} == set(STRATEGIES)


# --- errors ---------------------------------------------------------------------------------------

ALIAS = "[aliases.reasoning/cheapest]\n"


@pytest.mark.parametrize(
    ("overlay", "key", "expected"),
    [
        ("[aliases.reasoning/cheapest\n", "", "invalid TOML"),
        ('[models."gpt-4o"]\ncontext_window = "big"', 'models."gpt-4o".context_window', "expected an integer, got a string"),
        ('[models."gpt-4o"]\ncontext_window = 1.5', 'models."gpt-4o".context_window', "expected an integer, got a float"),
        ('[models."gpt-4o"]\nroutes = ["openai/gpt-4o"]', 'models."gpt-4o".routes[0]', "expected a table, got a string"),
        (
            '[models."gpt-4o"]\nroutes = [{ provider = "openrouter" }]',
            'models."gpt-4o".routes[0]',
            "missing required field `model`",
        ),
        ('[models."gpt-4o"]\nroutes = []', 'models."gpt-4o".routes', "expected an array of length >= 1"),
        ('[models."gpt-4o"]\ninput_price = 1.0', 'models."gpt-4o"', "unknown field `input_price`"),
        ('[models."gpt-4o"]\ninput_price_per_mtok = -1', 'models."gpt-4o".input_price_per_mtok', "expected a number >= 0"),
        ('[models."gpt-4o"]\noutput_price_per_mtok = inf', 'models."gpt-4o".output_price_per_mtok', "finite"),
        (
            '[models."gpt-4o"]\ncapabilities = ["chat", "audio"]',
            'models."gpt-4o".capabilities[1]',
            "unknown capability 'audio'; expected some of chat, embeddings, tools, vision, streaming",
        ),
        ('[models."mine"]\ncapabilities = ["chat"]', 'models."mine"', "a new model needs `routes`"),
        ("models = 3", "models", "expected a table"),
        ("[alias.reasoning/cheapest]", "alias", "unknown section; expected `models` or `aliases`"),
        (ALIAS + 'targets = ["gpt-4o"]', 'aliases."reasoning/cheapest"', "missing required field `strategy`"),
        (
            ALIAS + 'strategy = "cheap"\ntargets = ["gpt-4o"]',
            'aliases."reasoning/cheapest".strategy',
            "unknown strategy 'cheap'; expected one of first, random, round_robin, cheapest, fastest",
        ),
        (ALIAS + 'strategy = 1\ntargets = ["gpt-4o"]', 'aliases."reasoning/cheapest".strategy', "expected a string, got an integer"),
        (ALIAS + 'strategy = "first"\ntargets = []', 'aliases."reasoning/cheapest".targets', "length >= 1"),
        (ALIAS + 'strategy = "first"\ntargets = "gpt-4o"', 'aliases."reasoning/cheapest".targets', "expected an array"),
        (
            ALIAS + 'strategy = "first"\ntargets = ["gpt-4o", "claude-3-haikuu"]',
            'aliases."reasoning/cheapest".targets[1]',
            "unknown model 'claude-3-haikuu'; expected a model id from the registry (did you mean 'claude-3-haiku'?)",
        ),
        (
            ALIAS + 'strategy = "first"\ntargets = ["reasoning/best"]\n'
            '[aliases.reasoning/best]\nstrategy = "first"\ntargets = ["gpt-4"]',
            'aliases."reasoning/cheapest".targets[0]',
            "'reasoning/best' is an alias; expected a model id",
        ),
        (
            '[aliases."gpt-4o"]\nstrategy = "first"\ntargets = ["gpt-4"]',
            'aliases."gpt-4o"',
            "'gpt-4o' is already a model id",
        ),
    ],
)
def test_bad_overlay_names_source_key_and_expectation(overlay: str, key: str, expected: str) -> None:
    with pytest.raises(RegistryError) as info:
        load_registry(overlay, "conf/ai-models.toml")

    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"conf/ai-models.toml: {key}" if key else "conf/ai-models.toml: ")
    assert expected in message


def test_error_names_the_layer_it_came_from() -> None:
    defaults = (REPO_ROOT / "shared" / "default_models.toml").read_text()
    bad_alias = '[aliases.a/b]\nstrategy = "first"\ntargets = ["gone"]\n'

    with pytest.raises(RegistryError, match=r'^one\.toml: aliases\."a/b"\.targets\[0\]'):
        _merge_sources([(defaults, DEFAULTS_SOURCE), (bad_alias, "one.toml"), ("", "two.toml")])


def test_read_overlay_file_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(RegistryError, match=rf"^{missing}: cannot read registry overlay"):
        read_overlay_file(missing)

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('owned_by = "caf\xe9"'.encode("latin-1"))
    with pytest.raises(RegistryError, match=rf"^{latin1}: not UTF-8"):
        read_overlay_file(latin1)

    good = tmp_path / "ai-models.toml"
    good.write_text(PAGE_SNIPPET)
    assert read_overlay_file(str(good)) == PAGE_SNIPPET


# --- restricted_to --------------------------------------------------------------------------------

RESTRICT_OVERLAY = """
[models."gpt-4o"]
routes = [
    { provider = "openrouter", model = "openai/gpt-4o" },
    { provider = "foundry", model = "gpt-4o" },
]

[models."mine"]
capabilities = ["chat"]
routes = [{ provider = "local", model = "mine" }]

[aliases.mixed]
strategy = "first"
targets = ["mine", "gpt-4o", "gpt-4o-mini"]

[aliases.local-only]
strategy = "first"
targets = ["mine"]
"""


def test_restricted_to_drops_routes_models_and_alias_targets() -> None:
    registry = load_registry(RESTRICT_OVERLAY)

    openrouter = registry.restricted_to({"openrouter"})
    assert "mine" not in openrouter.models
    assert openrouter.models["gpt-4o"].routes == (Route("openrouter", "openai/gpt-4o"),)
    assert openrouter.models["gpt-4"] is registry.models["gpt-4"]
    assert openrouter.aliases["mixed"].targets == ("gpt-4o", "gpt-4o-mini")
    assert "local-only" not in openrouter.aliases
    assert openrouter.lookup("local-only") == (None, [])

    foundry_and_local = registry.restricted_to(["foundry", "local"])
    assert set(foundry_and_local.models) == {"gpt-4o", "mine", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small",
                                             "text-embedding-3-large"}
    assert foundry_and_local.models["gpt-4o"].routes == (Route("foundry", "gpt-4o"),)
    assert targets(foundry_and_local, "mixed") == ["mine", "gpt-4o", "gpt-4o-mini"]
    assert targets(foundry_and_local, "local-only") == ["mine"]

    nothing = registry.restricted_to(())
    assert (len(nothing.models), len(nothing.aliases)) == (0, 0)

    # The original is untouched.
    assert len(registry.models["gpt-4o"].routes) == 2
    assert registry.aliases["mixed"].targets == ("mine", "gpt-4o", "gpt-4o-mini")


def test_routes_of_providers_without_credentials_go_last() -> None:
    registry = load_registry()

    both = registry.restricted_to(["openrouter", "bedrock"])
    no_aws = registry.restricted_to(["openrouter", "bedrock"], lacking_credentials=["bedrock"])
    no_keys = registry.restricted_to(["openrouter", "bedrock"], lacking_credentials=["bedrock", "openrouter"])

    haiku = "claude-3-haiku"
    assert [r.provider for r in both.models[haiku].routes] == ["bedrock", "openrouter"]
    assert [r.provider for r in no_aws.models[haiku].routes] == ["openrouter", "bedrock"]
    # Nobody can sign in: the declared order stands, and the worker says what is missing.
    assert [r.provider for r in no_keys.models[haiku].routes] == ["bedrock", "openrouter"]


def test_restricted_to_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        load_registry().restricted_to("openrouter")


# --- fetch_overlay --------------------------------------------------------------------------------


class _OverlayHandler(http.server.BaseHTTPRequestHandler):
    release: threading.Event

    def do_GET(self) -> None:
        if self.path == "/ai-models.toml":
            body = PAGE_SNIPPET.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/toml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/ai-models.toml")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            # Hold the request without answering until the test is over.
            self.release.wait(5)
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def overlay_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    release = threading.Event()
    handler = type("Handler", (_OverlayHandler,), {"release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def test_fetch_overlay(overlay_server: str) -> None:
    text = asyncio.run(fetch_overlay(f"{overlay_server}/ai-models.toml", timeout=2))

    assert text == PAGE_SNIPPET
    assert asyncio.run(fetch_overlay(f"{overlay_server}/moved", timeout=2)) == PAGE_SNIPPET


def test_fetch_overlay_not_found(overlay_server: str) -> None:
    url = f"{overlay_server}/missing.toml"

    with pytest.raises(RegistryError, match=rf"^{url}: expected HTTP 200 for the registry overlay, got 404"):
        asyncio.run(fetch_overlay(url, timeout=2))


def test_fetch_overlay_timeout(overlay_server: str) -> None:
    url = f"{overlay_server}/slow"

    with pytest.raises(RegistryError, match=rf"^{url}: no registry overlay within 0.2s"):
        asyncio.run(fetch_overlay(url, timeout=0.2))


def test_fetch_overlay_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ai-models.toml"

    with pytest.raises(RegistryError, match=rf"^{url}: cannot fetch registry overlay: ConnectError"):
        asyncio.run(fetch_overlay(url, timeout=2))
