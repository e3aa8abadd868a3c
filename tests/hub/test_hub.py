"""hf:// paths against a fake Hub on 127.0.0.1 (tests/fake_hub.py): what is read, and what is judged.

huggingface_hub is pointed at the fake Hub through its endpoint setting and a temporary cache;
no test reaches the internet. Tests assert the bytes the server sent, not only the verdicts.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.cli_runner import invoke
from safetensors.torch import save_file

import tensorsafe
import tensorsafe.hub.remote as remote
from tensorsafe.readers.sniff import HDF5_USER_BLOCK_OFFSETS, TAR_BLOCK
from tensorsafe.readers.zip_directory import END_SEARCH_BYTES
from tensorsafe.hub.client import parse_hub_url
from tensorsafe.hub.scan import scan_hub, validate_hub
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tensorsafe.hub.remote import RemoteBuffer, RemoteReadError, scan_buffer
from tests import pickle_ops as op
from tests.fake_hub import FakeHub

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
SYSTEM = op.call_system()
BIG = 48 << 20
"""The large tensor in the "multi-GB" stand-ins: big enough that reading it would show."""


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    """A torch zip checkpoint, a torch zip with a malicious data.pkl, and a safetensors file, each
    with a 48 MB tensor."""
    d = tmp_path_factory.mktemp("big")
    state = {"big": torch.zeros(BIG // 4), **{f"layer{i}.weight": torch.randn(64, 64) for i in range(40)}}
    torch.save(state, d / "model.ckpt")
    torch.save({"big": torch.zeros(BIG // 4), "hook": _RunsCommand()}, d / "evil.ckpt")
    save_file({"big": torch.zeros(BIG // 4), "small": torch.ones(3, 3)}, str(d / "model.safetensors"))
    return {"model.ckpt": d / "model.ckpt", "evil.ckpt": d / "evil.ckpt", "model.safetensors": d / "model.safetensors"}


class _RunsCommand:
    """Pickled as a call of os.system (torch.save only writes it; nothing runs)."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


def _sd_repo(hub: FakeHub, **security) -> None:
    hub.add_repo("me/sd", {"v1.ckpt": FIXTURES / "tiny-sd1.ckpt", "legacy.pt": FIXTURES / "tiny-sd-legacy.pt",
                           "unet/model.safetensors": FIXTURES / "tiny-sd.safetensors"}, security)


def _findings(fr) -> list[tuple]:
    return sorted((f.rule_id, f.message, str(f.location)) for f in fr.findings)


# -- reading little ---------------------------------------------------------------------------------------------
def test_large_torch_checkpoint_reads_a_few_hundred_kilobytes_with_the_local_verdict(hub, big_files):
    hub.add_repo("me/big", {"model.ckpt": big_files["model.ckpt"]})
    local = tensorsafe.scan(big_files["model.ckpt"]).files[0]
    fr = scan_hub("hf://me/big/model.ckpt").files[0]
    assert fr.path == "hf://me/big/model.ckpt"
    assert (fr.verdict, fr.kind, fr.pickles, _findings(fr)) == ("clean", "pytorch-zip", local.pickles, [])
    assert fr.size == big_files["model.ckpt"].stat().st_size > BIG
    assert fr.bytes_read == hub.bytes_served("me/big") < 512 << 10
    assert hub.full_downloads == 0


def test_malicious_pickle_in_a_large_zip_is_found_without_reading_the_tensors(hub, big_files):
    hub.add_repo("me/evil", {"evil.ckpt": big_files["evil.ckpt"]})
    fr = scan_hub("hf://me/evil").files[0]
    assert fr.verdict == "fail"
    assert any(f.rule_id.startswith("PK-") and "system" in f.message for f in fr.findings)
    assert _findings(fr) == _findings(tensorsafe.scan(big_files["evil.ckpt"]).files[0])
    assert fr.bytes_read == hub.bytes_served("me/evil") < 256 << 10


def test_repository_scan_matches_the_local_scan_file_by_file(hub):
    _sd_repo(hub)
    remote_files = {fr.path: fr for fr in scan_hub("hf://me/sd").files}
    assert sorted(remote_files) == ["hf://me/sd/legacy.pt", "hf://me/sd/unet/model.safetensors", "hf://me/sd/v1.ckpt"]
    for name, path in (("legacy.pt", "tiny-sd-legacy.pt"), ("v1.ckpt", "tiny-sd1.ckpt"),
                       ("unet/model.safetensors", "tiny-sd.safetensors")):
        local = tensorsafe.scan(FIXTURES / path).files[0]
        fr = remote_files[f"hf://me/sd/{name}"]
        assert (fr.verdict, fr.kind, fr.pickles, _findings(fr)) == \
               (local.verdict, local.kind, local.pickles, _findings(local)), name
    assert sum(fr.bytes_read for fr in remote_files.values()) == hub.bytes_served("me/sd")
    assert remote_files["hf://me/sd/v1.ckpt"].bytes_read < (FIXTURES / "tiny-sd1.ckpt").stat().st_size / 10


def test_library_scan_validate_and_scan_many_take_hub_urls_beside_local_paths(hub, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "evil.bin").write_bytes(SYSTEM)
    _sd_repo(hub)
    hub.add_repo("me/raw", {"evil.bin": tmp_path / "evil.bin"})
    report = tensorsafe.scan([FIXTURES / "tiny-sd.safetensors", "hf://me/raw", "hf://me/sd/v1.ckpt"])
    assert [fr.path for fr in report.files] == [str(FIXTURES / "tiny-sd.safetensors"), "hf://me/raw/evil.bin",
                                               "hf://me/sd/v1.ckpt"]
    assert [fr.verdict for fr in report.files] == ["clean", "fail", "clean"] and report.exit_code == 1
    assert report.files[2].bytes_read == hub.bytes_served("me/sd") < (FIXTURES / "tiny-sd1.ckpt").stat().st_size
    with ThreadPoolExecutor(2) as pool:
        batch = {fr.path: fr.verdict for fr in tensorsafe.scan_many(["hf://me/raw", "hf://me/sd/v1.ckpt"],
                                                                      executor=pool)}
    assert batch == {"hf://me/raw/evil.bin": "fail", "hf://me/sd/v1.ckpt": "clean"}
    validated = tensorsafe.validate("hf://me/sd/unet/model.safetensors").files[0]
    assert validated.path == "hf://me/sd/unet/model.safetensors" and validated.verdict == "clean"


def test_malicious_raw_pickle_is_flagged_and_cli_exits_1(hub, tmp_path):
    (tmp_path / "evil.bin").write_bytes(SYSTEM)
    hub.add_repo("me/raw", {"sub/evil.bin": tmp_path / "evil.bin"})
    result = invoke(["scan", "hf://me/raw", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    (entry,) = data["files"]
    assert entry["path"] == "hf://me/raw/sub/evil.bin" and entry["verdict"] == "fail"
    assert entry["bytes_read"] == len(SYSTEM) == hub.bytes_served()


def test_safetensors_header_is_validated_from_its_header_bytes(hub, big_files):
    path = big_files["model.safetensors"]
    hub.add_repo("me/st", {"model.safetensors": path})
    n = int.from_bytes(path.read_bytes()[:8], "little")
    fr = validate_hub("hf://me/st/model.safetensors").files[0]
    assert fr.verdict == "clean" and fr.kind == "safetensors"
    assert _findings(fr) == _findings(tensorsafe.validate(path).files[0])
    # 8 + N (at least the first 512 bytes: the tar check's block), the 64 KiB end window the
    # polyglot (zip) check reads and 8 bytes at each place h5py looks for a superblock: no more
    probes = sum(1 for at in HDF5_USER_BLOCK_OFFSETS if at + 8 <= path.stat().st_size)
    assert fr.bytes_read == hub.bytes_served("me/st") <= max(8 + n, TAR_BLOCK) + END_SEARCH_BYTES + 8 * probes
    result = invoke(["inspect", "hf://me/st/model.safetensors", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {t["name"] for t in data["tensors"]} == {"big", "small"}
    assert data["bytes_read"] == 8 + n


def test_text_report_says_how_much_was_read(hub):
    _sd_repo(hub)
    result = invoke(["scan", "hf://me/sd/v1.ckpt", "-v"])
    assert result.exit_code == 0, result.output
    size = (FIXTURES / "tiny-sd1.ckpt").stat().st_size
    assert f"read {hub.bytes_served():,} of {size:,} bytes from the Hub" in result.output


# -- failing closed ---------------------------------------------------------------------------------------------
def test_server_error_is_exit_2_never_clean(hub):
    _sd_repo(hub)
    hub.fail_resolve_get = True
    result = invoke(["scan", "hf://me/sd/v1.ckpt"])
    assert result.exit_code == 2, result.output
    assert "IO-03" in result.output and "CLEAN" not in result.output


def test_server_that_ignores_ranges_is_refused(hub, big_files):
    hub.add_repo("me/big", {"model.ckpt": big_files["model.ckpt"]})
    hub.ignore_ranges = True
    fr = scan_hub("hf://me/big/model.ckpt").files[0]
    assert fr.verdict == "error" and [f.rule_id for f in fr.findings] == ["IO-03"]
    assert "206" in fr.findings[0].message


def test_missing_repository_and_file_are_errors(hub):
    _sd_repo(hub)
    assert invoke(["scan", "hf://me/nothing"]).exit_code == 2
    assert invoke(["scan", "hf://me/sd/nope.ckpt"]).exit_code == 2


def test_read_budget_is_an_error_and_deep_downloads_the_file(hub, big_files):
    hub.add_repo("me/big", {"model.ckpt": big_files["model.ckpt"]})
    fr = scan_hub("hf://me/big/model.ckpt", max_bytes=10_000).files[0]
    assert fr.verdict == "error" and "budget" in fr.findings[0].message
    assert hub.bytes_served() <= 10_000
    hub.reset_counts()
    result = invoke(["scan", "--deep", "--json", "hf://me/big/model.ckpt"])
    assert result.exit_code == 0, result.output
    size = big_files["model.ckpt"].stat().st_size
    assert json.loads(result.output)["files"][0]["bytes_read"] == size == hub.bytes_served()


def test_swallowed_fetch_error_still_makes_the_file_unjudged():
    """A reader that catches the error (here: the zip probe of a polyglot) cannot turn it into a verdict."""
    data = op.proto(2) + op.EMPTY_DICT + op.STOP + b"\0" * 100_000

    class FailingTail:
        size = len(data)

        def fetch(self, start: int, end: int) -> bytes:
            if end > 50_000:
                raise ConnectionError("connection reset")
            return data[start:end]

    fr = scan_buffer("x", RemoteBuffer(FailingTail()), DEFAULT_POLICY)
    assert fr.verdict == "error" and "IO-03" in [f.rule_id for f in fr.findings]


@pytest.mark.parametrize("window", [3, 8, 21])
def test_pickle_walked_in_windows_reads_as_walked_whole(monkeypatch, tmp_path, window):
    """Text arguments cut by a window end (pickle.py reads such a line up to the end of the stream)."""
    monkeypatch.setattr(remote, "FIRST_WALK_WINDOW", window)
    monkeypatch.setattr(remote, "WINDOW_GROWTH", 2)
    samples = [b"B\x02\x00\x00\x00;\xc7q\x02itorch._utils\n_rebuild_tensor_v2\n.",
               b"ibuiltins\nobject\n(S'true'\nibuiltins\neval\n0j\x03\x00\x00\x00P1.5\nj\x02",
               SYSTEM, op.proto(2) + op.EMPTY_DICT + op.STOP + SYSTEM]

    for i, data in enumerate(samples):
        path = tmp_path / f"s{i}"
        path.write_bytes(data)

        class Source:
            size = len(data)

            def fetch(self, start: int, end: int, data=data) -> bytes:
                return data[start:end]

        fr = scan_buffer(str(path), RemoteBuffer(Source(), readahead=0), DEFAULT_POLICY)
        local = tensorsafe.scan(path).files[0]
        assert (_findings(fr), fr.kind) == (_findings(local), local.kind), data


def test_remote_buffer_never_serves_a_hole():
    data = bytes(range(256)) * 64
    seen = []

    class Source:
        size = len(data)

        def fetch(self, start: int, end: int) -> bytes:
            seen.append((start, end))
            return data[start:end]

    buf = RemoteBuffer(Source(), readahead=0)
    assert buf[100:110] == data[100:110] and buf[5000] == data[5000]
    assert buf.find(b"\x05\x06", 1000, 2000) == data.find(b"\x05\x06", 1000, 2000)
    seen.clear()
    assert buf[90:120] == data[90:120]
    assert seen == [(90, 100), (110, 120)]  # only the gaps are fetched
    assert buf.bytes_read == 10 + 1 + 1000 + 20
    short = RemoteBuffer(type("S", (), {"size": 10, "fetch": lambda self, s, e: b"x"})(), readahead=0)
    with pytest.raises(RemoteReadError):
        short[0:5]
    assert short.failed is not None


# -- offline, hub verdicts, convert -------------------------------------------------------------------------------
def test_offline_mode_scans_the_cache_without_a_request(hub, monkeypatch):
    from huggingface_hub import constants, hf_hub_download

    _sd_repo(hub)
    hf_hub_download("me/sd", "v1.ckpt")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.fail_resolve_get = True
    before = len(hub.log)
    report = scan_hub("hf://me/sd/v1.ckpt")
    (fr,) = report.files
    assert fr.path == "hf://me/sd/v1.ckpt" and fr.verdict == "clean" and fr.kind == "pytorch-zip"
    assert fr.bytes_read == 0 and len(hub.log) == before
    missing = scan_hub("hf://me/sd/legacy.pt").files[0]
    assert missing.verdict == "error" and missing.findings[0].rule_id == "IO-03"


def test_online_scan_uses_a_cached_copy(hub):
    from huggingface_hub import hf_hub_download

    _sd_repo(hub)
    hf_hub_download("me/sd", "legacy.pt")
    hub.reset_counts()
    fr = scan_hub("hf://me/sd/legacy.pt").files[0]
    assert fr.verdict == "clean" and fr.bytes_read == 0 == hub.bytes_served()


def test_hub_verdicts_are_shown_and_disagreement_flagged(hub, tmp_path):
    (tmp_path / "evil.bin").write_bytes(SYSTEM)
    unsafe = {"status": "unsafe", "avScan": {"virusFound": False, "virusNames": None},
              "pickleImportScan": {"highestSafetyLevel": "dangerous",
                                   "imports": [{"module": "os", "name": "system", "safety": "dangerous"}]}}
    safe = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None}, "pickleImportScan": None}
    hub.add_repo("me/mixed", {"v1.ckpt": FIXTURES / "tiny-sd1.ckpt", "evil.bin": tmp_path / "evil.bin",
                              "legacy.pt": FIXTURES / "tiny-sd-legacy.pt"},
                 {"v1.ckpt": unsafe, "evil.bin": safe, "legacy.pt": safe})
    result = invoke(["scan", "hf://me/mixed", "--hub-verdicts"])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "hub verdict: unsafe (pickle imports dangerous: os.system)" in out
    assert out.count("HUB-01") == 2  # the Hub's unsafe clean file, and the Hub's safe malicious one
    report = scan_hub("hf://me/mixed", verdicts=True)
    by_path = {fr.path: fr for fr in report.files}
    assert by_path["hf://me/mixed/legacy.pt"].hub_verdict == "safe"
    assert "HUB-01" not in [f.rule_id for f in by_path["hf://me/mixed/legacy.pt"].findings]
    assert by_path["hf://me/mixed/v1.ckpt"].verdict == "clean"  # HUB-01 warns, it does not fail


def test_convert_from_the_hub(hub, tmp_path):
    _sd_repo(hub)
    out = tmp_path / "out"
    result = invoke(["convert", "hf://me/sd/v1.ckpt", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert (out / "model_index.json").is_file() and (out / "unet").is_dir()
    assert hub.bytes_served("me/sd") == (FIXTURES / "tiny-sd1.ckpt").stat().st_size


def test_hub_url_parsing():
    assert parse_hub_url("hf://a/b@refs%2Fpr%2F1/x/y.ckpt") == parse_hub_url("hf://a/b@refs/pr/1/x/y.ckpt")
    hp = parse_hub_url(Path("hf://datasets/a/b@v2/f.bin"))
    assert (hp.repo_id, hp.revision, hp.path, hp.repo_type) == ("a/b", "v2", "f.bin", "dataset")
    assert str(hp) == "hf://datasets/a/b@v2/f.bin"
    for bad in ("hf://onlyowner", "hf://a/b@/x"):
        with pytest.raises(tensorsafe.errors.UsageError):
            parse_hub_url(bad)


def test_files_beside_the_model_are_identified_remotely_as_locally(hub, tmp_path):
    """Text, msgpack, LFS pointers and unknown binaries get the same verdicts over range requests."""
    msgpack = pytest.importorskip("msgpack")
    files = {
        "README.md": b"# A model\n\nIt does things.\n" * 200,
        "config.json": b'{"hidden_size": 8}',
        "flax_model.msgpack": msgpack.packb({"params": {f"w{i}": msgpack.ExtType(1, bytes(70_000))
                                                        for i in range(20)}}),
        "weights.bin": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 99\n",
        "blob.dat": bytes(range(0xA0, 0x100)) * 100,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    hub.add_repo("me/side", paths)
    remote = {fr.path.rsplit("/", 1)[-1]: fr for fr in scan_hub("hf://me/side").files}
    for name, path in paths.items():
        local = tensorsafe.scan(path).files[0]
        assert (remote[name].verdict, remote[name].kind, _findings(remote[name])) == \
               (local.verdict, local.kind, _findings(local)), name
    assert remote["flax_model.msgpack"].verdict == "clean"
    assert remote["blob.dat"].verdict == "error" and remote["weights.bin"].verdict == "error"
