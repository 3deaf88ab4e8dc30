"""node.yaml: one strict, typed schema composed of each package's settings.

Unknown keys are errors; every error names the file, line, dotted key and the bad value.
Relative paths are resolved against the directory holding the config file. Secrets
never stand in the YAML: a setting ``x_env`` names an environment variable and
``x_file`` a file (see :func:`read_secret`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from delivery.channel_settings import EmailSettings, SmsSettings
from delivery.settings import DeliverySettings
from node.audit_settings import AuditSettings
from portal.settings import PortalSettings
from release.identity import IdentitySettings
from ris.settings import RisSettings
from rules.source import YamlDocument, YamlSourceError, read_yaml_file
from scp.pacs_settings import PacsSettings, with_scp_defaults
from scp.settings import ScpSettings
from store.settings import StoreSettings

if TYPE_CHECKING:  # imported when rules are compiled: most commands never need them
    from rules import RuleSet

DEFAULT_CONFIG = "node.yaml"


class ConfigError(Exception):
    """node.yaml is unreadable or invalid; ``str()`` lists each problem on its own line."""

    #: What the command line prints above the problems.
    heading = "invalid configuration"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NodeSettings(BaseModel):
    """The ``node:`` section: identity and where data lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hospital_name: str = Field(
        default="",
        max_length=100,
        description="The hospital's name as patients see it: in every email (\"Your "
        "imaging from <hospital_name> is ready\") and the portal's page titles. Empty: "
        "email.from_name, else node.name (`courier doctor` warns while it is the "
        "shipped default).",
    )
    name: str = Field(default="courier", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    data_dir: Path = Field(
        default=Path("data"),
        description="Received instances, spool, packages, outboxes; relative to this file.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or one JSON object per line (time, level, logger, "
        "message) for a log shipper.",
    )

    @field_validator("data_dir")
    @classmethod
    def _not_empty(cls, v: Path) -> Path:
        if str(v).strip() in ("", "."):
            raise ValueError("give a folder of its own for Courier's data, e.g. ./data")
        return v


class Config(BaseModel):
    """The whole of node.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSettings = Field(default_factory=NodeSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    scp: ScpSettings = Field(default_factory=ScpSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    portal: PortalSettings = Field(default_factory=PortalSettings)
    pacs: PacsSettings | None = Field(
        default=None, description="The PACS to query and pull from; absent: no pulls."
    )
    audit: AuditSettings = Field(default_factory=AuditSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    ris: RisSettings = Field(default_factory=RisSettings)
    rules: list[Any] | None = Field(
        default=None, description="The rules, inline (see rules/README.md)."
    )
    rules_file: str | None = Field(
        default=None, description="A separate rules file admins edit; relative to this file."
    )

    # Set by load_config, not by the YAML.
    source: Path | None = Field(default=None, exclude=True)
    _ruleset: RuleSet | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _pacs_defaults(cls, data: Any) -> Any:
        # pacs.calling_ae_title and pacs.move_destination default to scp.ae_title.
        if isinstance(data, dict) and isinstance(data.get("pacs"), dict):
            scp = data.get("scp")
            ae = scp.get("ae_title", "COURIER") if isinstance(scp, dict) else "COURIER"
            data = {**data, "pacs": with_scp_defaults(data["pacs"], ae)}
        return data

    @model_validator(mode="after")
    def _one_rules_source(self) -> Config:
        if self.rules is not None and self.rules_file:
            raise ValueError("give rules or rules_file, not both")
        return self

    @property
    def ruleset(self) -> RuleSet:
        """The compiled rules (empty: every stable study is held for staff)."""
        if self._ruleset is None:
            from rules import RuleSet

            self._ruleset = RuleSet([])
        return self._ruleset

    @property
    def hospital_name(self) -> str:
        """The hospital's display name: ``node.hospital_name``, else ``email.from_name``
        (what named it before there was a setting of its own), else ``node.name``."""
        return (
            " ".join(self.node.hospital_name.split())
            or " ".join(self.email.from_name.split())
            or self.node.name
        )

    @property
    def api_keys_path(self) -> Path:
        """Absolute path of the API key digests file."""
        return self.data_dir / self.portal.api_keys_file

    @property
    def rules_path(self) -> Path | None:
        """Absolute path of ``rules_file``, if one is set."""
        if not self.rules_file:
            return None
        base = self.source.parent if self.source is not None else Path.cwd()
        return (base / self.rules_file).resolve()

    @property
    def data_dir(self) -> Path:
        """Absolute data directory."""
        base = self.source.parent if self.source is not None else Path.cwd()
        return (base / self.node.data_dir).resolve()


def config_path(given: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The config to use: ``--config``, else ``$COURIER_CONFIG``, else ``./node.yaml``."""
    return Path(given or environ.get("COURIER_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path, *, compile_rules: bool = True) -> Config:
    """Read and validate ``path``; raises :class:`ConfigError` listing every problem.

    ``compile_rules=False`` skips the rules (``cfg.ruleset`` is then empty): commands
    that do not apply them (status, requests, studies) keep working while an admin is
    fixing a broken rules file.
    """
    try:
        doc = read_yaml_file(path)
    except FileNotFoundError:
        raise ConfigError(
            [f"{path}: no such file; pass --config PATH or set COURIER_CONFIG"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read it: {exc.strerror}"]) from None
    except YamlSourceError as exc:
        raise ConfigError([str(exc)]) from None
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1:1: the top level must be a mapping of sections"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(doc, exc)) from None
    cfg = cfg.model_copy(update={"source": path.resolve()})
    if compile_rules:
        cfg._ruleset = _compile_rules(cfg, doc)
    return cfg


def _compile_rules(cfg: Config, doc: YamlDocument) -> RuleSet:
    from rules import RuleSet, RuleSyntaxError, load_rules, load_rules_from_data

    try:
        if cfg.rules is not None:
            return load_rules_from_data(doc.data["rules"], doc, at=("rules",))
        rules_path = cfg.rules_path
        if rules_path is not None:
            try:
                return load_rules(rules_path)
            except OSError as exc:
                raise ConfigError(
                    [f"{doc.source}: rules_file: cannot read {rules_path}: {exc.strerror}"]
                ) from None
    except RuleSyntaxError as exc:
        raise ConfigError(str(exc).splitlines()) from None
    return RuleSet([])


# Values under these keys are never echoed in an error (they may hold a password).
_SECRET_WORDS = ("password", "secret", "token", "database_url", "key")


def _problems(doc: YamlDocument, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        # Drop pydantic's union-branch names (e.g. 'str', 'AllowedPeer') from the key path.
        loc = _yaml_loc(doc, loc)
        mark = doc.key_mark(loc)
        where = f"{doc.source}:{mark[0]}:{mark[1]}" if mark else doc.source
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against the commented node.yaml"
        value = err.get("input")
        secret = any(w in key for w in _SECRET_WORDS)
        hidden = secret or isinstance(value, dict | list) or value is None
        shown = "" if hidden else f" (got {value!r})"
        out.append(f"{where}: {key}: {msg}{shown}")
    return out


def _yaml_loc(doc: YamlDocument, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    kept: list[Any] = []
    for part in loc:
        if (*kept, part) in doc.marks or isinstance(part, int):
            kept.append(part)
        elif not kept or (*kept,) in doc.marks:
            # A key pydantic names that the YAML lacks (missing or extra): keep it.
            kept.append(part)
    return tuple(kept)


def read_secret(
    name: str,
    *,
    env: str | None,
    file: str | None,
    base: Path,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Return the secret named by ``x_env`` or ``x_file``; raises ConfigError if it is absent."""
    if env:
        value = environ.get(env)
        if value is None:
            raise ConfigError([f"{name}_env: environment variable {env} is not set"])
        return value.strip()
    if file:
        p = Path(file)
        p = p if p.is_absolute() else base / p
        try:
            return p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{name}_file: cannot read {p}: {exc.strerror}"]) from None
    return None
