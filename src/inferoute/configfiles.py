"""Reading configuration files: the one place that opens them, so the core parses data and never
does I/O.

Every failure is a ConfigError naming the file ("cannot read scheduler config x.yaml: No such
file or directory", "x.yaml is not valid YAML: ..."), never an OSError or a parser traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .core.admission import AdmissionConfig, parse_admission_config
from .core.errors import ConfigError
from .core.scheduling.config import EndpointPickerConfig, parse_config

#: the named scheduler configs shipped with the package (`round-robin`, `llm-d`, ...)
POLICY_FOLDER = Path(__file__).resolve().parent / "configs"
#: the policy of a pool that names none (`serve`, `epp`, a serving config's pool): inferoute's
#: own, the best or within 1% of the best policy on every scenario of docs/benchmark.md
#: averaged over its seeds (issue 17, item 7); `llm-d` is the llm-d guide's weights
DEFAULT_POLICY = "inferoute"


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed YAML of a config file; ConfigError "cannot read {what} {path}: ..." or
    "{path} is not valid YAML: ..." instead of an OSError or a parser traceback."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None


def load_config_file(path: str | Path) -> EndpointPickerConfig:
    """An EndpointPickerConfig from a YAML file."""
    return parse_config(read_yaml_file(path, "scheduler config"), str(path))


def packaged_policies() -> dict[str, Path]:
    """Named scheduler configs shipped in `inferoute/configs/` (`round-robin`, `llm-d`, ...)."""
    return {p.stem: p for p in sorted(POLICY_FOLDER.glob("*.yaml"))}


def resolve_config(name_or_path: str | None) -> EndpointPickerConfig:
    """A config by packaged policy name, by file path, or `DEFAULT_POLICY`'s when None."""
    policies = packaged_policies()
    if name_or_path is None:
        name_or_path = DEFAULT_POLICY
    if name_or_path in policies:
        return load_config_file(policies[name_or_path])
    if Path(name_or_path).exists():
        return load_config_file(name_or_path)
    raise ConfigError(f"scheduler config {name_or_path!r} is neither a file nor a packaged "
                      f"policy ({', '.join(policies) or 'none shipped'})")


def read_admission_file(path: str | Path) -> Any:
    """The admission section of a YAML file, unparsed: its `admission:` top-level key when it
    has one, else the whole document."""
    data = read_yaml_file(path, "admission config")
    if isinstance(data, dict) and "admission" in data:
        data = data["admission"]
    return data


def load_admission_config(path: str | Path) -> AdmissionConfig:
    """Load from a YAML file (see `read_admission_file`)."""
    return parse_admission_config(read_admission_file(path), str(path))
