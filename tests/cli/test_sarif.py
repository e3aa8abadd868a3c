"""SARIF from ``scan`` and ``validate`` on many real files: valid against the official SARIF 2.1.0
schema (tests/data/sarif-schema-2.1.0.json, the OASIS errata01 schema) and shaped for code scanning."""
from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from urllib.parse import unquote

import jsonschema
import pytest
from tests.cli_runner import invoke

from tests import pickle_ops as op
from tests import st_build as st
from tests.conftest import FIXTURES

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.EMPTY_DICT + op.STOP
URI_REFERENCE = re.compile(r"[A-Za-z0-9\-._~/%!$&'()*+,;=:@]+")
"""RFC 3986 characters (jsonschema checks no ``uri`` format without an extra package)."""


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(out, "w") as z:
            for name, body in members:
                z.writestr(name, body)
    return out.getvalue()


def _bad_crc() -> bytes:
    data = bytearray(_zip([("a.pkl", SYSTEM)]))
    central = data.rindex(b"PK\x01\x02")
    data[central + 16:central + 20] = b"\0\0\0\0"
    data[14:18] = b"\0\0\0\0"
    return bytes(data)


def _corpus(root: Path) -> Path:
    """Clean, malicious, unparseable, zip tricks and broken safetensors headers, with awkward names."""
    good_st = st.model([("w", "F32", (2, 2))])
    files = {
        "clean.pkl": BENIGN,
        "evil.ckpt": SYSTEM,
        "twice evil.bin": SYSTEM + SYSTEM,  # a space, and two identical findings in one file
        "naïve-model.pt": SYSTEM,
        "broken.pt": op.proto(2) + b"\xff",
        "truncated.pkl": SYSTEM[:-3],
        "dupes.zip": _zip([("archive/data.pkl", BENIGN), ("archive/data.pkl", SYSTEM)]),
        "prepended.ckpt": SYSTEM + _zip([("archive/data.pkl", BENIGN)]),
        "badcrc.zip": _bad_crc(),
        "evil.pkl.gz": gzip.compress(SYSTEM),
        "sub/dir/good.safetensors": good_st,
        "tiny.safetensors": b"\x01\x02",
        "notjson.safetensors": st.build("{not json"),
        "pasteof.safetensors": st.build({}, length=1 << 20),
        "overlap.safetensors": st.build({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                         "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 4),
        "polyglot.safetensors": good_st + _zip([("x", b"y")]),
        "renamed-safetensors.png": st.build({"__metadata__": {"k": 1}}),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shutil.copytree(FIXTURES, root / "fixtures")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("sarif-corpus"))


def _sarif(corpus: Path, monkeypatch, *args: str) -> dict:
    monkeypatch.chdir(corpus)
    result = invoke([*args, "--sarif", "."])
    assert result.exit_code in (1, 2), result.output
    return json.loads(result.output)


@pytest.fixture(scope="module", params=["scan", "validate"])
def logs(request, corpus) -> tuple[dict, dict, str]:
    """The same command run twice (for the fingerprint stability check), and its name."""
    mp = pytest.MonkeyPatch()
    try:
        return _sarif(corpus, mp, request.param), _sarif(corpus, mp, request.param), request.param
    finally:
        mp.undo()


def test_valid_against_the_sarif_2_1_0_schema(logs):
    log = logs[0]
    errors = sorted(jsonschema.Draft4Validator(SCHEMA).iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert log["version"] == "2.1.0" and len(log["runs"]) == 1


def test_the_corpus_exercises_many_rules(logs):
    rules = {r["ruleId"] for r in logs[0]["runs"][0]["results"]}
    assert len(rules) >= 5, rules
    assert rules & {"PK-I01", "ST-F16"}


def test_every_result_names_a_described_rule(logs):
    run = logs[0]["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) == len({r["ruleId"] for r in run["results"]})
    for res in run["results"]:
        assert ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note") and res["message"]["text"]
    for r in rules:
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"]
        assert r["help"]["text"] and "How to fix" in r["help"]["markdown"] and r["id"] in r["help"]["markdown"]
        assert r["helpUri"].endswith("rules.md#" + r["id"].lower())
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert "security" in r["properties"]["tags"]
        assert 0.0 <= float(r["properties"]["security-severity"]) <= 10.0


def test_locations_are_relative_to_the_checkout(logs, corpus):
    run = logs[0]["runs"][0]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == corpus.resolve().as_uri() + "/"
    uris = set()
    for res in run["results"]:
        (loc,) = res["locations"]
        artifact = loc["physicalLocation"]["artifactLocation"]
        assert artifact["uriBaseId"] == "%SRCROOT%"
        uri = artifact["uri"]
        assert URI_REFERENCE.fullmatch(uri) and not uri.startswith("/") and ":" not in uri, uri
        assert (corpus / unquote(uri)).is_file(), uri
        uris.add(unquote(uri))
    assert EXPECTED_FILES[logs[2]] <= uris


EXPECTED_FILES = {"scan": {"twice evil.bin", "naïve-model.pt", "evil.pkl.gz", "dupes.zip"},
                  "validate": {"tiny.safetensors", "renamed-safetensors.png", "overlap.safetensors"}}


def test_byte_offsets_become_binary_regions(logs):
    results = logs[0]["runs"][0]["results"]
    evil = [r for r in results if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "evil.ckpt"]
    if evil:  # scan: the import sits at byte 2, the file is binary so there is no line
        assert evil[0]["locations"][0]["physicalLocation"]["region"] == {"byteOffset": 2}
    for res in results:
        loc = res["locations"][0]
        region = loc["physicalLocation"].get("region", {})
        assert "startLine" not in region
        if "logicalLocations" in loc:  # inside an archive member: the offset is the member's
            assert "region" not in loc["physicalLocation"] and loc["logicalLocations"][0]["fullyQualifiedName"]


def test_fingerprints_are_unique_and_stable(logs):
    first, second = ([r["partialFingerprints"] for r in log["runs"][0]["results"]] for log in logs[:2])
    assert first == second
    keys = [(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
             r["partialFingerprints"]["primaryLocationLineHash"]) for r in logs[0]["runs"][0]["results"]]
    assert len(keys) == len(set(keys))
    assert len({fp["tensorsafe/v2"] for fp in first}) == len(first)


def test_fingerprints_ignore_offsets_and_survive_a_move(tmp_path, monkeypatch):
    """Padding the front of a pickle moves the import; the alert keeps its identity."""
    (tmp_path / "m.pkl").write_bytes(SYSTEM)
    before = _sarif(tmp_path, monkeypatch, "scan")["runs"][0]["results"][0]
    (tmp_path / "m.pkl").write_bytes(op.proto(2) + b"N0" * 5 + SYSTEM[2:])
    after = _sarif(tmp_path, monkeypatch, "scan")["runs"][0]["results"][0]
    assert before["locations"] != after["locations"]
    assert before["partialFingerprints"] == after["partialFingerprints"]


def test_a_path_outside_the_folder_is_an_absolute_file_uri(tmp_path, monkeypatch):
    (tmp_path / "evil.pkl").write_bytes(SYSTEM)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    log = json.loads(invoke(["scan", "--sarif", str(tmp_path / "evil.pkl")]).output)
    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": (tmp_path / "evil.pkl").resolve().as_uri(), "index": 0}
    assert log["runs"][0]["artifacts"][0]["location"] == {"uri": (tmp_path / "evil.pkl").resolve().as_uri()}
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(log))


def test_an_unreadable_path_is_a_valid_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["scan", "--sarif", "missing.pt"])
    assert result.exit_code == 2
    log = json.loads(result.output)
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(log))
    (res,) = log["runs"][0]["results"]
    assert res["ruleId"] == "IO-01" and res["level"] == "error"
    artifact = res["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": "missing.pt", "uriBaseId": "%SRCROOT%", "index": 0}
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True and invocation["exitCode"] == 2
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and note["associatedRule"]["id"] == "IO-01" and "missing.pt" in str(note)


def test_a_remote_file_keeps_its_uri():
    from tensorsafe.report import FileResult, Finding, Location, Report
    from tensorsafe.sarif import to_sarif

    url = "hf://org/some repo/unet/model.ckpt"
    log = to_sarif(Report([FileResult(url, "pickle", findings=[Finding(url, "PK-I01", "imports os.system",
                                                                       Location((), 2), "os.system")])]))
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(log))
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "hf://org/some%20repo/unet/model.ckpt", "index": 0},
                        "region": {"byteOffset": 2}}


def _module_pickle(names: list[str]) -> bytes:
    """A pickled object graph that imports many classes, as a pickled ``nn.Module`` does."""
    body = b"".join(op.global_("mymodels.layers", n) + op.POP for n in names)
    return op.proto(2) + body + op.NONE + op.STOP


def test_one_result_per_file_and_rule(logs):
    results = logs[0]["runs"][0]["results"]
    keys = [(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], r["ruleId"]) for r in results]
    assert len(keys) == len(set(keys))
    assert sum(r["properties"]["findings"] for r in results) >= len(results)


def test_a_pickled_module_is_one_result_listing_every_import(tmp_path, monkeypatch):
    names = [f"Block{i}" for i in range(19)]
    (tmp_path / "module.pt").write_bytes(_module_pickle(names))
    log = _sarif(tmp_path, monkeypatch, "scan")
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(log))
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "PK-I02" and result["properties"]["findings"] == 19
    for name in names:
        assert f"mymodels.layers.{name}," in result["message"]["text"] + ","
    assert result["properties"]["triggers"] == [f"mymodels.layers.{n}" for n in names]
    related = result["relatedLocations"]
    assert [r["id"] for r in related] == list(range(1, 20))
    assert len({r["physicalLocation"]["region"]["byteOffset"] for r in related}) == 19
    assert all(r["message"]["text"] for r in related)


def test_fingerprint_survives_a_new_import(tmp_path, monkeypatch):
    """The alert is the file and the rule: one more unknown import updates it, not replaces it."""
    (tmp_path / "m.pkl").write_bytes(_module_pickle(["A"]))
    before = _sarif(tmp_path, monkeypatch, "scan")["runs"][0]["results"][0]
    (tmp_path / "m.pkl").write_bytes(_module_pickle(["Z", "A", "B"]))
    after = _sarif(tmp_path, monkeypatch, "scan")["runs"][0]["results"][0]
    assert before["message"] != after["message"]
    assert before["partialFingerprints"] == after["partialFingerprints"]


def test_one_artifact_per_file_and_results_point_at_theirs(logs, corpus):
    run = logs[0]["runs"][0]
    artifacts = run["artifacts"]
    uris = [a["location"]["uri"] for a in artifacts]
    assert len(uris) == len(set(uris))
    for a in artifacts:
        assert a["location"]["uriBaseId"] == "%SRCROOT%" and a["roles"] == ["analysisTarget"]
        path = corpus / unquote(a["location"]["uri"])
        assert a["length"] == path.stat().st_size
    reported = {unquote(a["location"]["uri"]) for a in artifacts}
    on_disk = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()}
    if logs[2] == "scan":
        assert reported == on_disk
    else:
        assert {"tiny.safetensors", "sub/dir/good.safetensors"} <= reported <= on_disk
        assert "good.safetensors" not in {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                                          for r in run["results"]}
    for res in run["results"]:
        artifact = res["locations"][0]["physicalLocation"]["artifactLocation"]
        assert artifacts[artifact["index"]]["location"]["uri"] == artifact["uri"]


def test_invocation_reports_a_run_that_finished_and_what_it_could_not_judge(logs):
    run = logs[0]["runs"][0]
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is True  # false would make code scanning drop every result
    fails = any(r["properties"]["outcome"] == "fail" for r in run["results"])
    assert invocation["exitCode"] == (1 if fails else 2) and invocation["exitCodeDescription"]
    notes = invocation["toolExecutionNotifications"]
    not_judged = {(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], r["ruleId"])
                  for r in run["results"] if r["properties"]["outcome"] == "error"}
    assert not_judged
    assert {(n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], n["associatedRule"]["id"])
            for n in notes} == not_judged
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    for n in notes:
        assert n["level"] == "error" and n["message"]["text"].startswith("could not be judged: ")
        assert rules[n["associatedRule"]["index"]] == n["associatedRule"]["id"]


def test_a_file_let_through_unscanned_is_a_warning_notification(tmp_path, monkeypatch):
    (tmp_path / "notes.xyz").write_bytes(bytes(range(256)))
    monkeypatch.chdir(tmp_path)
    result = invoke(["scan", "--allow-unscanned", "--sarif", "."])
    assert result.exit_code == 0, result.output
    log = json.loads(result.output)
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(log))
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True and invocation["exitCode"] == 0
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "warning" and note["associatedRule"]["id"] == "SCAN-01"


def test_a_clean_run_has_no_notifications(tmp_path, monkeypatch):
    (tmp_path / "ok.pkl").write_bytes(BENIGN)
    monkeypatch.chdir(tmp_path)
    log = json.loads(invoke(["scan", "--sarif", "."]).output)
    run = log["runs"][0]
    assert run["results"] == [] and run["invocations"][0]["toolExecutionNotifications"] == []
    assert run["invocations"][0]["exitCode"] == 0
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["ok.pkl"]
