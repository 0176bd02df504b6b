"""Named endpoints and the order in which a speaker's endpoint and model are chosen.

Resolution order, most specific first:
CLI flag > persona file > scenario file > ``default_endpoint`` in delib.toml > ``OPENAI_BASE_URL``
> the embedded local model (``delib.models.local``), which is started only when nothing else is set.

Presets for the usual local servers (``ollama``, ``vllm``, ``llamacpp``, ``lmstudio``) are named
endpoints that need no file; a ``delib.toml`` entry of the same name replaces a preset.

``delib.toml`` is read from the user config folder and then from the working directory, the
second overriding the first endpoint by endpoint::

    default_endpoint = "ollama"

    [endpoints.ollama]
    base_url = "http://localhost:11434/v1"
    model = "llama3.2"

    [endpoints.hosted]
    base_url = "https://api.example.com/v1"
    model = "some-model"
    api_key_env = "EXAMPLE_API_KEY"
    headers = { "X-Team" = "research" }
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from delib.errors import FileFormatError, InputError, MissingApiKey, SettingError, UnknownIdError
from delib.library.files import format_validation_error
from delib.library.personas import Persona
from delib.library.scenarios import Scenario
from delib.models.urls import redact_url, url_problem

CONFIG_FILE = "delib.toml"
# Many local servers need no key, but the openai client refuses to start without one.
PLACEHOLDER_API_KEY = "sk-no-key-required"
# A turn of a few hundred tokens on a slow local model can take minutes; a hung server should not.
DEFAULT_TIMEOUT = 300.0
# Connecting is quick when a server is up; fail fast when it is not.
DEFAULT_CONNECT_TIMEOUT = 10.0
# Retries after the first attempt, for connection errors, 408/409/429 and 5xx only.
DEFAULT_MAX_RETRIES = 3
# First back-off wait in seconds; doubles per retry unless the server sends Retry-After.
DEFAULT_RETRY_WAIT = 1.0
# Requests in flight per endpoint; servers such as Ollama queue beyond their own parallelism.
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 400
# Name given to endpoints that come from --base-url or OPENAI_BASE_URL rather than delib.toml.
CLI_ENDPOINT = "cli"
ENV_ENDPOINT = "env"
# The local model delib serves itself (see delib.models.local).
EMBEDDED_ENDPOINT = "embedded"
# Hosts that mean "this machine": their servers get the prefix-cache prompt layout by default.
LOCAL_HOSTS = ("localhost", "::1", "0.0.0.0")

SystemMode = Literal["auto", "native", "fold"]


class EndpointConfig(BaseModel):
    """One OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1, description="e.g. http://localhost:11434/v1")

    @field_validator("base_url")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    model: str | None = Field(default=None, description="Model used unless a flag or file says")
    api_key_env: str | None = Field(default=None, description="Environment variable with the key")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers")
    timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, description="Seconds for one request, streaming included"
    )
    idle_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a streamed reply may go without a chunk (default: timeout)",
    )
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    system_message: SystemMode = Field(
        default="auto",
        description="native: send a system message; fold: put it in the first user message; "
        "auto: native, falling back to fold if the server's chat template rejects it",
    )
    structured_output: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto",
        description="How to ask for JSON that fits a schema (verdicts, speaker choice): "
        "json_schema (OpenAI, vLLM, llama-server), json_object (llama-cpp-python), off; "
        "auto: json_schema, stepping down when the server rejects it",
    )
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=20)
    retry_wait: float = Field(default=DEFAULT_RETRY_WAIT, ge=0)
    max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, ge=1, le=256)
    max_tokens: int | None = Field(
        default=None, ge=1, description="Reply cap per turn unless a flag or file says"
    )
    verdict_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Reply cap of the closing verdict unless the scenario says (default: twice "
        "a turn, at least 800)",
    )
    context_tokens: int | None = Field(
        default=None,
        ge=256,
        description="The server's context size: prompts are trimmed to fit it with the reply",
    )
    prompt_layout: Literal["auto", "persona_first", "shared_first", "compact"] = Field(
        default="auto",
        description="shared_first: what all speakers share first, the persona last (reuses a "
        "local server's prompt cache); persona_first: the persona as system message; compact: "
        "a short persona, the question, the latest turns and a short cue (the embedded "
        "model's); auto: shared_first for servers on this machine, persona_first for others",
    )


# Ready-made endpoints for the common local servers, each on its usual port.
PRESETS: dict[str, EndpointConfig] = {
    # Ollama serves one request per model at a time unless OLLAMA_NUM_PARALLEL says more.
    "ollama": EndpointConfig(base_url="http://localhost:11434/v1", max_concurrency=1),
    "vllm": EndpointConfig(base_url="http://localhost:8000/v1"),
    # llama.cpp's llama-server; newer builds may listen on 9931 instead of 8080.
    "llamacpp": EndpointConfig(base_url="http://localhost:8080/v1", max_concurrency=1),
    "lmstudio": EndpointConfig(base_url="http://localhost:1234/v1", max_concurrency=1),
}


class ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_endpoint: str | None = None
    refusal_judge: str | None = None  # an endpoint name or base URL (--refusal-judge)
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)


def user_config_dir() -> Path:
    """``$DELIB_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/delib``, else ``~/.config/delib``."""
    if os.environ.get("DELIB_CONFIG_DIR"):
        return Path(os.environ["DELIB_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "delib"


def read_config_file(path: Path) -> ConfigFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise FileFormatError(str(path), f"TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(str(path), f"cannot read file: {exc}") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(str(path), exc) from None


@dataclass
class Config:
    """Endpoints from every delib.toml found, merged."""

    endpoints: dict[str, EndpointConfig] = field(default_factory=lambda: dict(PRESETS))
    default_endpoint: str | None = None
    refusal_judge: str | None = None
    sources: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, cwd: Path | None = None) -> Config:
        config = cls()
        for path in (user_config_dir() / CONFIG_FILE, (cwd or Path.cwd()) / CONFIG_FILE):
            if path.is_file():
                parsed = read_config_file(path)
                config.endpoints.update(parsed.endpoints)
                config.default_endpoint = parsed.default_endpoint or config.default_endpoint
                config.refusal_judge = parsed.refusal_judge or config.refusal_judge
                config.sources.append(path)
        if config.default_endpoint and config.default_endpoint not in config.names():
            raise FileFormatError(
                str(config.sources[-1]),
                f"names endpoint '{config.default_endpoint}', which no [endpoints.*] defines",
                "default_endpoint",
            )
        return config

    def names(self) -> list[str]:
        """Every endpoint name that resolves, the embedded model included."""
        return sorted({*self.endpoints, EMBEDDED_ENDPOINT})

    def endpoint(self, name: str, wanted_by: str) -> EndpointConfig | None:
        """The named endpoint's settings; None for the embedded model (unless a file
        defines an endpoint of that name)."""
        if name in self.endpoints:
            return self.endpoints[name]
        if name == EMBEDDED_ENDPOINT:
            return None
        where = ", ".join(str(p) for p in self.sources) or f"no {CONFIG_FILE} found"
        raise UnknownIdError("endpoint", name, self.names(), hint=f"wanted by {wanted_by}; {where}")


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: its name, its settings and the key to send (never archived)."""

    name: str
    config: EndpointConfig
    api_key: str = field(repr=False)
    api_key_env: str | None = None

    def describe(self) -> dict:
        """What the manifest records: no key, no header values."""
        return {
            "name": self.name,
            "base_url": redact_url(self.config.base_url),
            "api_key_env": self.api_key_env,
            "header_names": sorted(self.config.headers),
            "system_message": self.config.system_message,
            "timeout": self.config.timeout,
            "idle_timeout": self.config.idle_timeout,
            "structured_output": self.config.structured_output,
            "prompt_layout": self.layout(),
        }

    @property
    def is_local(self) -> bool:
        """A server on this machine (the embedded one included)."""
        host = urlsplit(self.config.base_url).hostname or ""
        return host in LOCAL_HOSTS or host.startswith("127.")

    def layout(self) -> str:
        """The prompt layout for this endpoint (see delib.debate.prompts)."""
        if self.config.prompt_layout != "auto":
            return self.config.prompt_layout
        return "shared_first" if self.is_local else "persona_first"


@dataclass(frozen=True)
class Overrides:
    """What the CLI flags say; None means the flag was not given."""

    base_url: str | None = None
    model: str | None = None
    endpoint: str | None = None
    api_key_env: str | None = None
    system_message: SystemMode | None = None
    persona_models: dict[str, str] = field(default_factory=dict)
    temperature: float | None = None
    max_tokens: int | None = None
    gguf: Path | None = None  # serve this GGUF file locally for every persona


@dataclass(frozen=True)
class SpeakerSettings:
    """Everything needed to call the model for one persona."""

    endpoint: Endpoint
    model: str | None  # None: ask the server, use its only model
    temperature: float
    max_tokens: int


def parse_pairs(pairs: list[str], flag: str, form: str = "KEY=VALUE") -> dict[str, str]:
    """Parse repeated ``FLAG KEY=VALUE`` options; an InputError names the bad one."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"{flag} '{pair}': expected {form}")
        result[key.strip()] = value.strip()
    return result


def parse_persona_models(pairs: list[str]) -> dict[str, str]:
    """Parse repeated ``--persona-model ID=MODEL`` flags."""
    return parse_pairs(pairs, "--persona-model", "ID=MODEL, e.g. philosopher=llama3")


def _api_key(name: str, env_var: str | None, fallback_env: str | None) -> tuple[str, str | None]:
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise MissingApiKey(
                f"endpoint '{name}' needs an API key: set the environment variable {env_var}"
            )
        return value, env_var
    if fallback_env and os.environ.get(fallback_env):
        return os.environ[fallback_env], fallback_env
    return PLACEHOLDER_API_KEY, None


class Resolver:
    """Chooses endpoint, model and generation settings for each persona of a run."""

    def __init__(
        self, config: Config, overrides: Overrides, embedded: Endpoint | None = None
    ) -> None:
        self.config = config
        self.overrides = overrides
        self._cache: dict[str, Endpoint] = {}
        # The embedded server's endpoint, once it runs (see prepare); until then none.
        self.embedded = embedded

    def named(self, name: str, wanted_by: str) -> Endpoint | None:
        if name not in self._cache:
            cfg = self.config.endpoint(name, wanted_by)
            if cfg is None:
                return None
            if self.overrides.system_message:
                cfg = cfg.model_copy(update={"system_message": self.overrides.system_message})
            key, env = _api_key(name, cfg.api_key_env, None)
            self._cache[name] = Endpoint(name, cfg, key, env)
        return self._cache[name]

    def ad_hoc(self, name: str, base_url: str) -> Endpoint:
        # Keys for ad-hoc URLs follow the openai client's convention: OPENAI_API_KEY.
        if name not in self._cache:
            key, env = _api_key(name, self.overrides.api_key_env, "OPENAI_API_KEY")
            mode = self.overrides.system_message or "auto"
            problem = url_problem(base_url)
            if problem:
                raise SettingError("base_url", base_url, problem)
            config = EndpointConfig(base_url=base_url, system_message=mode)
            self._cache[name] = Endpoint(name, config, key, env)
        return self._cache[name]

    def needs_embedded(self, personas: list[Persona], scenario: Scenario) -> bool:
        """Whether any of these personas would speak through the embedded model."""
        return any(self.configured_endpoint(p, scenario) is None for p in personas)

    def endpoint_for(self, persona: Persona, scenario: Scenario) -> Endpoint:
        endpoint = self.configured_endpoint(persona, scenario) or self.embedded
        if endpoint is None:
            raise InputError(
                "no endpoint configured and the embedded model is not running: pass --base-url "
                f"URL, --endpoint NAME from {CONFIG_FILE}, or set OPENAI_BASE_URL"
            )
        return endpoint

    def configured_endpoint(self, persona: Persona, scenario: Scenario) -> Endpoint | None:
        """The endpoint chosen by flags, files or environment; None means the embedded model."""
        o = self.overrides
        if o.base_url:
            return self.ad_hoc(CLI_ENDPOINT, o.base_url)
        if o.gguf:
            return None
        if o.endpoint:
            return self.named(o.endpoint, "--endpoint")
        if persona.endpoint:
            return self.named(persona.endpoint, f"persona '{persona.id}'")
        if scenario.endpoint:
            return self.named(scenario.endpoint, f"scenario '{scenario.id}'")
        if self.config.default_endpoint:
            return self.named(self.config.default_endpoint, f"default_endpoint in {CONFIG_FILE}")
        if os.environ.get("OPENAI_BASE_URL"):
            return self.ad_hoc(ENV_ENDPOINT, os.environ["OPENAI_BASE_URL"])
        return None

    def settings_for(self, persona: Persona, scenario: Scenario) -> SpeakerSettings:
        o = self.overrides
        endpoint = self.endpoint_for(persona, scenario)
        model = (
            o.persona_models.get(persona.id)
            or o.model
            or persona.model
            or scenario.model
            or endpoint.config.model
        )
        temperature = next(
            v
            for v in (o.temperature, persona.temperature, scenario.temperature, DEFAULT_TEMPERATURE)
            if v is not None
        )
        max_tokens = next(
            v
            for v in (
                o.max_tokens,
                persona.max_tokens,
                scenario.limits.max_tokens,
                endpoint.config.max_tokens,
                DEFAULT_MAX_TOKENS,
            )
            if v is not None
        )
        return SpeakerSettings(endpoint, model, temperature, max_tokens)
