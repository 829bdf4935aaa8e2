"""The models and credentials of the gateway that serves every provider's mock at once (``cloud_gateway``)."""

from __future__ import annotations

from dataclasses import dataclass

AWS_ACCESS_KEY = "AKIAMOCKCONFORMANCE1"
AWS_SECRET_KEY = "mock/secret/conformance+key"
AZURE_KEY = "azure-conformance-key-0123"
PRICE_IN, PRICE_OUT, PRICE_CACHED = 1.0, 2.0, 0.5


@dataclass(frozen=True)
class Case:
    provider: str
    chat_model: str
    upstream_model: str
    embed_model: str | None = None
    embed_upstream: str | None = None


CASES = [
    Case("openrouter", "conf-openrouter", "openai/gpt-4o-mini", "conf-embed-openrouter", "openai/text-embedding-3-small"),
    Case("local", "conf-local", "gpt-4o-mini", "conf-embed-local", "text-embedding-3-small"),
    Case("bedrock", "conf-bedrock", "anthropic.claude-3-haiku-20240307-v1:0",
         "conf-embed-titan", "amazon.titan-embed-text-v2:0"),
    Case("foundry", "conf-foundry", "gpt-4o-mini", "conf-embed-foundry", "text-embedding-3-small"),
    Case("foundry", "conf-foundry-deployment", "deployments/gpt-4o",
         "conf-embed-foundry-deployment", "deployments/text-embedding-3-small"),
]
EXTRA_EMBED_CASES = [Case("bedrock", "conf-bedrock", "", "conf-embed-cohere", "cohere.embed-english-v3")]


def cloud_overlay() -> str:
    """A chat and an embeddings model per case, each served only by its case's provider."""
    out = []
    for case in CASES:
        out.append(f'''
[models."{case.chat_model}"]
owned_by = "conformance"
capabilities = ["chat", "tools", "vision", "streaming"]
routes = [{{ provider = "{case.provider}", model = "{case.upstream_model}" }}]
input_price_per_mtok = {PRICE_IN}
output_price_per_mtok = {PRICE_OUT}
cached_input_price_per_mtok = {PRICE_CACHED}
''')
    for case in CASES + EXTRA_EMBED_CASES:
        out.append(f'''
[models."{case.embed_model}"]
owned_by = "conformance"
capabilities = ["embeddings"]
routes = [{{ provider = "{case.provider}", model = "{case.embed_upstream}" }}]
input_price_per_mtok = {PRICE_IN}
''')
    out.append('''
[models."conf-foundry-missing"]
owned_by = "conformance"
capabilities = ["chat", "streaming"]
routes = [{ provider = "foundry", model = "deployments/no-such-deployment" }]
''')
    return "".join(out)
