"""The policy scan and validate apply: ``--policy FILE``, else the configuration of the folder the
command runs in (never a scanned path's), with the command-line options on top; and what the
report says of it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from tensorsafe.pickles.policy import Policy
from tensorsafe.policy_file import BUILT_IN, PolicyConfig, config_path, cwd_config, describe, load_policy_file
from tensorsafe.report import PolicyInfo


def policy_config(policy_file: Path | None) -> PolicyConfig:
    """``--policy FILE``, else the configuration of the folder the command runs in (never a scanned path's)."""
    return load_policy_file(policy_file) if policy_file is not None else cwd_config()


def with_options(config: PolicyConfig, *, allow_unscanned: bool = False,
                 limits: dict | None = None) -> PolicyConfig:
    """The policy's settings with the command-line options on top."""
    if allow_unscanned or limits:
        source = config.source if config.source != BUILT_IN else f"{BUILT_IN}, with command-line options"
        config = replace(config, allow_unscanned=config.allow_unscanned or allow_unscanned,
                         limits={**config.limits, **(limits or {})}, source=source)
    return config


def policy_info(policy: Policy, paths: Iterable, *, allow_empty: bool = False) -> PolicyInfo:
    """What the report says of the policy; notes a policy file that lies inside a scanned path."""
    info = describe(policy, allow_empty=allow_empty)
    where = config_path(policy.source)
    if where is not None:
        inside = any(_inside(Path(where), Path(p)) for p in paths if "://" not in str(p))
        info = replace(info, inside_scanned_path=inside)
    return info


def _inside(file: Path, scanned: Path) -> bool:
    file, scanned = file.resolve(), scanned.resolve()
    return file == scanned or scanned in file.parents
