"""Policy files: a TOML file (``--policy``) or the ``[tool.tensorsafe]`` table of the pyproject.toml of
the folder the command runs in, never a file found near the scanned paths (an upload could bring one).

    allow = ["mypackage.module:SomeClass"]       # extra allowed imports
    benign = ["mypackage.callbacks:MyCallback"]  # reported, not failed
    allow_unscanned = false                      # let files no reader identifies pass (never model extensions)

    [limits]                                     # safetensors header limits (tensorsafe.limits)
    max_tensors = 500_000
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tensorsafe.errors import PolicyFileError
from tensorsafe.limits import DEFAULT_LIMITS, HeaderLimits
from tensorsafe.pickles.policy import DEFAULT_POLICY, Policy
from tensorsafe.report import PolicyInfo

KNOWN_KEYS = frozenset({"allow", "benign", "limits", "allow_unscanned"})
BUILT_IN = "built-in"
PYPROJECT_TABLE = "[tool.tensorsafe]"


@dataclass(frozen=True)
class PolicyConfig:
    """A policy file's settings; :meth:`policy` turns them into the :class:`Policy` a scan applies."""

    allow: tuple[str, ...] = ()
    benign: tuple[str, ...] = ()
    limits: dict = field(default_factory=dict)
    source: str = BUILT_IN
    allow_unscanned: bool = False

    def policy(self, base: Policy = DEFAULT_POLICY) -> Policy:
        if not (self.allow or self.benign or self.limits or self.allow_unscanned) and self.source == BUILT_IN:
            return base
        new = base.extended(self.allow, self.benign, self.source)
        new.source = self.source
        new.allow_unscanned = self.allow_unscanned or base.allow_unscanned
        new.header_limits = tuple(sorted({**dict(base.header_limits), **self.limits}.items()))
        return new

    def header_limits(self) -> HeaderLimits:
        """The safetensors header limits (``tensorsafe validate``) this policy sets."""
        return DEFAULT_LIMITS.updated(self.limits, source=self.source) if self.limits else DEFAULT_LIMITS


def _toml() -> ModuleType:
    """``tomllib``, imported when there is a file to read (about 10 ms of start-up a scan without one
    does not pay)."""
    import tomllib

    return tomllib


def load_policy_file(path: str | os.PathLike) -> PolicyConfig:
    """Read a policy file; its table may sit at the top level or under ``[tool.tensorsafe]``."""
    path = Path(path)
    try:
        data = _toml().loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyFileError(f"cannot read policy file: {exc.strerror or exc}", path=path) from None
    except (_toml().TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"not valid TOML: {exc}", path=path) from None
    tool = data.get("tool")
    table = tool.get("tensorsafe", data) if isinstance(tool, dict) else data
    return _config(table, str(path))


def load_policy(path: str | os.PathLike) -> Policy:
    """The policy of a TOML file, ready for ``tensorsafe.scan(paths, policy=...)``.

    The library never looks for a policy by itself: a service that scans uploads loads its own
    policy file with this and passes it to every scan."""
    return load_policy_file(path).policy()


def _config(table: dict, source: str) -> PolicyConfig:
    if not isinstance(table, dict):
        raise PolicyFileError("[tool.tensorsafe] must be a table", path=source)
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
    allow_unscanned = table.get("allow_unscanned", False)
    if not isinstance(allow_unscanned, bool):
        raise PolicyFileError(f"'allow_unscanned' must be true or false, not {allow_unscanned!r}", path=source)
    DEFAULT_LIMITS.updated(limits, source=source)  # unknown names and bad values fail now, with the file named
    config = PolicyConfig(lists["allow"], lists["benign"], limits, source, allow_unscanned)
    config.policy()  # refuse dangerous entries and bad names now, with the file named
    return config


def resolve_policy(policy: Policy | PolicyConfig | None) -> Policy:
    """The policy a scan applies: the caller's (a ``PolicyConfig`` is turned into one), else the
    built-in policy. The library never looks for a policy file by itself."""
    if policy is None:
        return DEFAULT_POLICY
    return policy if isinstance(policy, Policy) else policy.policy()


def find_cwd_config(cwd: str | os.PathLike | None = None) -> Path | None:
    """The pyproject.toml holding a ``[tool.tensorsafe]`` table nearest at or above ``cwd`` (default: the
    working folder), looked for up to and including the folder that holds ``.git``; None if there is none."""
    folder = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
    for candidate in [folder, *folder.parents]:
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _read_table(pyproject) is not None:
            return pyproject
        if (candidate / ".git").exists():
            break
    return None


def _read_table(pyproject: Path) -> dict | None:
    try:
        data = _toml().loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, _toml().TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"cannot read {PYPROJECT_TABLE}: {exc}", path=pyproject) from None
    tool = data.get("tool")
    return tool.get("tensorsafe") if isinstance(tool, dict) else None


def cwd_config(cwd: str | os.PathLike | None = None) -> PolicyConfig:
    """The command line's default policy: the ``[tool.tensorsafe]`` table of the folder the command runs
    in (:func:`find_cwd_config`), else the built-in policy. Never looked up from a scanned path."""
    pyproject = find_cwd_config(cwd)
    if pyproject is None:
        return PolicyConfig()
    table = _read_table(pyproject)
    return _config(table or {}, f"{pyproject} {PYPROJECT_TABLE}")


def config_path(source: str) -> str | None:
    """The file a policy's ``source`` names (None for the built-in policy)."""
    if source == BUILT_IN:
        return None
    return source[:-len(PYPROJECT_TABLE) - 1] if source.endswith(" " + PYPROJECT_TABLE) else source


@functools.lru_cache(maxsize=64)
def _header_limits(table: tuple[tuple[str, int], ...], source: str) -> HeaderLimits:
    return DEFAULT_LIMITS.updated(dict(table), source=source) if table else DEFAULT_LIMITS


def header_limits_of(policy: Policy) -> HeaderLimits:
    """The safetensors header limits a scan applies under ``policy`` (its ``[limits]`` table)."""
    return _header_limits(policy.header_limits, policy.source)


def describe(policy: Policy, *, allow_empty: bool = False) -> PolicyInfo:
    """Which policy this is and what it loosens against the built-in one (for the report)."""
    base = DEFAULT_POLICY
    if policy is base:
        return PolicyInfo(allow_empty=allow_empty)
    allow = tuple(sorted(f"{m}:{n}" for (m, n) in policy.allowed if (m, n) not in base.allowed))
    benign = tuple(sorted(f"{m}:{n}" for (m, n) in policy.benign
                          if (m, n) not in base.benign and (m, n) not in policy.allowed))
    limits = tuple((name, value, getattr(DEFAULT_LIMITS, name)) for name, value in policy.header_limits
                   if value != getattr(DEFAULT_LIMITS, name, None))
    source = policy.source
    if source == BUILT_IN and (allow or benign or limits or policy.allow_unscanned
                               or set(policy.allowed) != set(base.allowed) or set(policy.benign) != set(base.benign)):
        source = "built-in, changed by the caller"
    return PolicyInfo(source, allow, benign, limits, policy.allow_unscanned, allow_empty)
