"""The daemon's configuration file (``/etc/sgagent/agent.yaml``), validated like a host document:
unknown fields are refused and every error is reported with its path
(``source.etcd.endpoints[0]: ...``).

    source:                 # exactly one of file | https | etcd
      file: {path: /etc/sgagent/host.yaml}
    backend: nftables       # nftables | iptables | auto (what the host already uses)
    netns: null             # optional: enforce inside this named network namespace
    resync_interval: 60     # seconds between full checks (source re-read, drift repair)
    state_dir: /var/lib/sgagent
    revocation: true        # cut live connections the new rules refuse (SEMANTICS section 4)
    metrics: {enabled: false, address: 127.0.0.1, port: 9469}
    flow_logs: {enabled: false, output: file, directory: /var/log/sgagent}   # or journal

``sgagent run`` without ``--config`` uses :func:`default_config`: a file source at
``/etc/sgagent/host.yaml`` and the defaults above.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..load import DocumentError, parse_text, pydantic_errors, read_file

DEFAULT_CONFIG_PATH = "/etc/sgagent/agent.yaml"
DEFAULT_DOCUMENT_PATH = "/etc/sgagent/host.yaml"
DEFAULT_STATE_DIR = "/var/lib/sgagent"
DEFAULT_METRICS_PORT = 9469
MAX_CONFIG_BYTES = 1024 * 1024
_KEY_PART = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _expand(path: str | None) -> str | None:
    """``$CREDENTIALS_DIRECTORY/token`` and ``~`` are expanded (systemd LoadCredential=)."""
    if path is None:
        return None
    return os.path.expanduser(os.path.expandvars(path))


class Backoff(_Strict):
    """Retry delays after a failure: ``initial * 2**n`` capped at ``max``, each multiplied by a
    random factor in [1 - jitter, 1] so that a fleet does not retry in step."""
    initial: float = Field(default=1.0, gt=0, le=3600)
    max: float = Field(default=30.0, gt=0, le=3600)
    jitter: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> "Backoff":
        if self.max < self.initial:
            raise ValueError(f"max ({self.max}) is below initial ({self.initial})")
        return self


class FileSource(_Strict):
    path: str = Field(default=DEFAULT_DOCUMENT_PATH, description="the host document")
    settle: float = Field(default=0.03, ge=0, le=5,
                          description="seconds to let a burst of writes settle before reading")
    force_polling: bool = Field(default=False, description="poll instead of inotify")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty path")
        return _expand(v)  # type: ignore[return-value]


class HttpsSource(_Strict):
    url: str = Field(description="https URL of this host's document")
    token_file: str | None = Field(default=None, description="file holding a bearer token")
    ca_bundle: str | None = Field(default=None, description="PEM CA bundle (default: system CAs)")
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=300,
                           description="seconds for a whole request (connect to last byte)")
    poll_interval: float = Field(default=15.0, gt=0, le=86400)
    backoff: Backoff = Backoff()
    allow_http: bool = Field(default=False, description="accept a plain http:// URL (testing only)")

    @field_validator("token_file", "ca_bundle", "client_cert", "client_key")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _expand(v)

    @model_validator(mode="after")
    def _check(self) -> "HttpsSource":
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise _at("url", f"{self.url!r} is not an https URL")
        if parts.scheme == "http" and not self.allow_http:
            raise _at("url", f"{self.url!r} is plain http (set allow_http: true to allow it)")
        if (self.client_cert is None) != (self.client_key is None):
            raise _at("client_key" if self.client_key is None else "client_cert",
                      "client_cert and client_key go together")
        return self


class EtcdSource(_Strict):
    endpoints: list[str] = Field(default=["http://127.0.0.1:2379"], min_length=1,
                                 description="etcd client URLs, tried in turn")
    prefix: str = Field(default="/sgagent", description="key prefix of the fleet's definitions")
    host: str | None = Field(default=None, description="this host's binding key (default: hostname)")
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=300, description="seconds per request")
    watch_timeout: float = Field(default=300.0, ge=5, le=86400,
                                 description="re-establish a silent watch after this many seconds")
    backoff: Backoff = Backoff(initial=0.2, max=10.0)
    # ``register`` in the file (the attribute's name would shadow BaseModel.register)
    registers: bool = Field(default=False, alias="register", description="fleet: register "
                            "this host's NIC addresses and its apply status on an etcd lease "
                            "(DAEMON.md)")
    lease_ttl: int = Field(default=10, ge=2, le=3600,
                           description="seconds a registration outlives its agent")

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for i, url in enumerate(v):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _at(i, f"{url!r} is not an etcd client URL (http://HOST:PORT or https://...)")
            try:
                parts.port
            except ValueError:
                raise _at(i, f"{url!r} has a bad port") from None
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") and v != "/" or "//" in v:
            raise ValueError(f"{v!r}: a prefix starts with '/' and does not end with one")
        return v.rstrip("/")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not _KEY_PART.match(v):
            raise ValueError(f"{v!r} is not a key name (1-128 of A-Z a-z 0-9 _ . : @ -)")
        return v

    @field_validator("ca_cert", "client_cert", "client_key")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _expand(v)

    @model_validator(mode="after")
    def _check(self) -> "EtcdSource":
        if (self.client_cert is None) != (self.client_key is None):
            raise _at("client_key" if self.client_key is None else "client_cert",
                      "client_cert and client_key go together")
        return self

    @property
    def host_name(self) -> str:
        if self.host is not None:
            return self.host
        import socket
        return socket.gethostname().split(".")[0]


class SourceConfig(_Strict):
    file: FileSource | None = None
    https: HttpsSource | None = None
    etcd: EtcdSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _one(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("file", "https", "etcd") if k in data]
            if len(given) != 1 and not (set(data) - {"file", "https", "etcd"}):
                what = "none" if not given else " and ".join(given)
                raise ValueError(f"give exactly one of file, https, etcd (got {what})")
        return data

    @property
    def kind(self) -> str:
        return "file" if self.file else "https" if self.https else "etcd"


class BasicAuth(_Strict):
    username: str = Field(min_length=1)
    password_file: str

    @field_validator("password_file")
    @classmethod
    def _path(cls, v: str) -> str:
        return _expand(v)  # type: ignore[return-value]


class MetricsConfig(_Strict):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_METRICS_PORT, ge=1, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None
    basic_auth: BasicAuth | None = None

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _expand(v)

    @model_validator(mode="after")
    def _check(self) -> "MetricsConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _at("tls_key" if self.tls_key is None else "tls_cert",
                      "tls_cert and tls_key go together")
        return self


class FlowLogsConfig(_Strict):
    """Flow records of logged rules (SEMANTICS section 9): read from the kernel and written
    as JSON lines to ``directory``/flows.log (rotated) or to the systemd journal."""
    enabled: bool = False
    output: Literal["file", "journal"] = "file"
    directory: str = "/var/log/sgagent"
    max_bytes: int = Field(default=64 << 20, ge=4096, le=1 << 40,
                           description="rotate flows.log past this size")
    backups: int = Field(default=5, ge=0, le=1000, description="rotated files kept")

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: str) -> str:
        v = _expand(v)  # type: ignore[assignment]
        if not v.startswith("/"):
            raise ValueError(f"{v!r}: directory must be an absolute path")
        return v


class Config(_Strict):
    source: SourceConfig = SourceConfig(file=FileSource())
    backend: Literal["nftables", "iptables", "auto"] = "nftables"
    netns: str | None = Field(default=None, description="named network namespace (ip netns)")
    resync_interval: float = Field(default=60.0, ge=0.2, le=86400)
    state_dir: str = DEFAULT_STATE_DIR
    revocation: bool = True
    metrics: MetricsConfig = MetricsConfig()
    flow_logs: FlowLogsConfig = FlowLogsConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("netns")
    @classmethod
    def _netns(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v in (".", "..")):
            raise ValueError(f"{v!r} is not a network namespace name")
        return v

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: str) -> str:
        v = _expand(v)  # type: ignore[assignment]
        if not v.startswith("/"):
            raise ValueError(f"{v!r}: state_dir must be an absolute path")
        return v


def _at(loc: str | int, msg: str) -> ValidationError:
    """A validation error located at a field of the model being validated."""
    from pydantic_core import InitErrorDetails, PydanticCustomError
    return ValidationError.from_exception_data("config", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{problem}", {"problem": msg}),
        loc=(loc,), input=None)])


def default_config() -> Config:
    return Config()


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DocumentError([f"(config): a config file is a mapping, not {type(data).__name__}"],
                            source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(pydantic_errors(exc), source) from None


def load_config(path: str | Path) -> Config:
    raw = read_file(path, MAX_CONFIG_BYTES)
    if len(raw) > MAX_CONFIG_BYTES:
        raise DocumentError([f"(config): over {MAX_CONFIG_BYTES} bytes"], str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError([f"(config): not UTF-8 text (byte {exc.start})"], str(path)) from None
    # the same input subset as host documents: no anchors, aliases or tags, no key twice
    data = parse_text(text, str(path))
    return parse_config(data, str(path))
