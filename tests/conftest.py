from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _test_the_installed_package() -> None:
    """Make ``import tensorsafe`` load what pip installed, not the checkout beside the tests.

    ``python -m pytest`` run from a checkout puts the checkout first on sys.path (the current
    directory, and pytest's rootdir for the ``tests`` package), which would shadow a plain
    ``pip install .``: the suite would test the source tree (without the compiled parts the install
    built) instead of the installed package. The ``tests`` package is already imported here, so the
    checkout can leave sys.path; an editable install still maps tensorsafe to the checkout, and
    where nothing is installed the checkout stays (tests/test_public_api.py then says so).
    Children started with ``python -c`` from the checkout get the same view (PYTHONSAFEPATH)."""
    def is_checkout(entry: str) -> bool:
        return Path(entry or os.curdir).resolve() == ROOT

    saved = sys.path[:]
    sys.path[:] = [entry for entry in saved if not is_checkout(entry)]
    if importlib.util.find_spec("tensorsafe") is None:
        sys.path[:] = saved
    os.environ.setdefault("PYTHONSAFEPATH", "1")


_test_the_installed_package()

import tensorsafe  # noqa: E402  (after the sys.path fix above)

FIXTURES = ROOT / "fixtures" / "models"


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


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hugging Face Hub on 127.0.0.1 that huggingface_hub and tensorsafe talk to (tests/fake_hub.py)."""
    from huggingface_hub import constants

    from tests.fake_hub import FakeHub

    fake = FakeHub().start()
    monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"))
    monkeypatch.setattr("tensorsafe.hub.client.HTTP_RETRIES", 0)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.stop()
