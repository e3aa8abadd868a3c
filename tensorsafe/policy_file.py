"""Policy files: a TOML file (``--policy``) or a ``[tool.tensorsafe]`` table in a repo's pyproject.toml.

    allow = ["mypackage.module:SomeClass"]     # extra allowed imports
    benign = ["mypackage.callbacks:MyCallback"]  # reported, not failed

    [limits]                                     # safetensors header limits (tensorsafe.header.limits)
    max_tensors = 500_000
"""
from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tensorsafe.errors import PolicyFileError
from tensorsafe.header.limits import DEFAULT_LIMITS
from tensorsafe.pickles.policy import DEFAULT_POLICY, Policy

KNOWN_KEYS = frozenset({"allow", "benign", "limits"})


@dataclass(frozen=True)
class PolicyConfig:
    allow: tuple[str, ...] = ()
    benign: tuple[str, ...] = ()
    limits: dict = field(default_factory=dict)
    source: str = "built-in policy"

    def policy(self, base: Policy = DEFAULT_POLICY) -> Policy:
        return base.extended(self.allow, self.benign, self.source) if (self.allow or self.benign) else base


def load_policy_file(path: str | Path) -> PolicyConfig:
    """Read a policy file; its table may sit at the top level or under ``[tool.tensorsafe]``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyFileError(f"cannot read policy file: {exc.strerror or exc}", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"not valid TOML: {exc}", path=path) from None
    table = data.get("tool", {}).get("tensorsafe", data) if "tool" in data else data
    return _config(table, str(path))


def _config(table: dict, source: str) -> PolicyConfig:
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise PolicyFileError(f"unknown keys {sorted(unknown)}; expected {sorted(KNOWN_KEYS)}", path=source)
    lists = {}
    for key in ("allow", "benign"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyFileError(f"'{key}' must be a list of 'module:name' strings", path=source)
        lists[key] = tuple(value)
    limits = table.get("limits", {})
    if not isinstance(limits, dict):
        raise PolicyFileError("'limits' must be a table", path=source)
    DEFAULT_LIMITS.updated(limits, source=source)  # unknown names and bad values fail now, with the file named
    config = PolicyConfig(lists["allow"], lists["benign"], limits, source)
    config.policy()  # refuse dangerous entries and bad names now, with the file named
    return config


@functools.lru_cache(maxsize=256)
def _repo_config(folder: Path) -> PolicyConfig:
    for candidate in [folder, *folder.parents]:
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise PolicyFileError(f"cannot read [tool.tensorsafe]: {exc}", path=pyproject) from None
            table = data.get("tool", {}).get("tensorsafe")
            if table is not None:
                return _config(table, f"{pyproject} [tool.tensorsafe]")
        if (candidate / ".git").exists():
            break
    return PolicyConfig()


def config_for_path(path: str | Path) -> PolicyConfig:
    """The ``[tool.tensorsafe]`` table of the nearest pyproject.toml above ``path`` (within its repo)."""
    path = os.path.abspath(os.fspath(path))
    return _folder_config(path if os.path.isdir(path) else os.path.dirname(path))


@functools.lru_cache(maxsize=1024)
def _folder_config(folder: str) -> PolicyConfig:
    """Cached by folder name: a scan of a thousand files in one folder looks it up once."""
    return _repo_config(Path(folder))


def policy_for_path(path: str | Path) -> Policy:
    return config_for_path(path).policy()
