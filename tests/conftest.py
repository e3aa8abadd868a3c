from __future__ import annotations

from pathlib import Path

import pytest

import tensorsafe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def scan_bytes(tmp_path):
    """Write bytes to a file (any name) and scan it."""
    counter = iter(range(10**6))

    def run(data: bytes, name: str | None = None, **kwargs) -> tensorsafe.Report:
        path = tmp_path / (name or f"sample-{next(counter)}.bin")
        path.write_bytes(data)
        return tensorsafe.scan(path, **kwargs)

    return run


def rule_ids(report: tensorsafe.Report) -> set[str]:
    return {f.rule_id for f in report.findings}
