"""Names from hostile files never act on a terminal: no control or format character but the report's own
line breaks reaches stdout or stderr in text form, and a name holding a newline forges no line.

File and folder names, zip and tar member names, pickle import names, safetensors tensor names and
metadata all come from the repository being judged. The text report, ``--explain``, ``inspect``,
``convert``'s summary, argparse's usage errors and the one-line ``tensorsafe: error:`` printer must
show them escaped (``\\u001b``); JSON and SARIF keep them exact, escaped by their encoders.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from tensorsafe.report import printable, printable_lines
from tests import pickle_ops as op
from tests.cli_runner import invoke
from tests.st_build import build, model

EVIL = "evil\nname\x1b[32m\u202e\r\x08\x07\x9b\u2066\u2028.pkl"
"""A file name with a newline, an ANSI colour, a bidi override and isolate, CR, backspace, BEL, a C1 CSI
and a line separator: Linux allows every byte but ``/`` and NUL."""
HOSTILE = "x\n\x1b[2J\r\u202ey\x07"
"""The same classes, for names inside files (members, imports, tensor names, metadata)."""
SYSTEM = op.call_system()


def assert_terminal_safe(text: str) -> None:
    """No character a terminal would act on, but the line breaks the report writes."""
    bad = sorted({f"U+{ord(ch):04X}" for ch in text if ch != "\n" and not ch.isprintable()})
    assert not bad, f"raw control/format characters reached the output: {bad}\n{text!r}"


def report_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("tensorsafe")]
    assert len(lines) == 1 and stderr.strip() == lines[0], stderr
    return lines[0]


@pytest.fixture
def evil_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / EVIL).write_bytes(SYSTEM)
    return folder


def test_printable_escapes_every_class_and_is_one_line():
    for ch in "\x00\x07\x08\t\n\r\x1b\x7f\x85\x9b\u200b\u200e\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069" \
              "\u2028\u2029\ufeff\ud800\U000e0001":
        escaped = printable(f"a{ch}b")
        assert escaped.isprintable() and escaped.startswith("a\\") and escaped.endswith("b"), repr(ch)
    assert printable("plain ä 名 🙂 name.pkl") == "plain ä 名 🙂 name.pkl"
    assert printable(printable(HOSTILE)) == printable(HOSTILE)  # escaping twice changes nothing
    assert printable_lines(["a\nb", "c"]) == "a\\u000ab\nc"


def test_scan_text_escapes_a_file_name(evil_folder):
    result = invoke(["scan", str(evil_folder)])
    assert result.exit_code == 1
    assert_terminal_safe(result.output)
    lines = report_lines(result.stdout)
    assert len(lines) == 4, lines  # the file, its finding, the policy, the summary: no forged line
    assert lines[0].startswith(f"{evil_folder}/evil\\u000aname\\u001b[32m\\u202e\\u000d") and ": FAIL (" in lines[0]
    assert lines[1].startswith("  PK-I01 fail/critical")
    assert lines[-1].endswith("-> FAIL")


@pytest.mark.parametrize("options", [["-v"], ["--jobs", "2"], ["--explain"]], ids=["verbose", "jobs", "explain"])
def test_scan_options_escape_a_file_name(evil_folder, tmp_path, options):
    (evil_folder / "clean\x1b[31m\n.pkl").write_bytes(op.proto(2) + op.EMPTY_TUPLE + op.STOP)
    result = invoke(["scan", *options, str(evil_folder)])
    assert result.exit_code == 1
    assert_terminal_safe(result.output)
    if "--explain" in options:
        header = [line for line in result.stderr.splitlines() if line.startswith("--- ")]
        assert len(header) == 1 and "evil\\u000aname\\u001b[32m" in header[0]
        assert "system('true')" in result.stderr


def test_scan_to_a_file_keeps_the_summary_one_line(evil_folder, tmp_path):
    out = tmp_path / "report\n\x1b.txt"
    result = invoke(["scan", "-o", str(out), str(evil_folder)])
    assert result.exit_code == 1
    assert_terminal_safe(result.output)
    assert len(report_lines(result.stderr)) == 1
    assert_terminal_safe(out.read_text(encoding="utf-8"))


def test_json_keeps_names_exact(evil_folder):
    raw = os.fsencode(evil_folder) + b"/undecodable\xff\x1b.pkl"
    with open(raw, "wb") as f:
        f.write(SYSTEM)
    result = invoke(["scan", "--json", str(evil_folder)])
    assert_terminal_safe(result.output)
    paths = {os.fsencode(f["path"]) for f in json.loads(result.stdout)["files"]}
    assert paths == {os.fsencode(evil_folder / EVIL), raw}
    text = invoke(["scan", str(evil_folder)])
    assert_terminal_safe(text.output)
    assert "undecodable\\udcff\\u001b.pkl: FAIL" in text.stdout


def test_sarif_keeps_names_exact(evil_folder, monkeypatch):
    monkeypatch.chdir(evil_folder.parent)
    result = invoke(["scan", "--sarif", evil_folder.name])
    assert_terminal_safe(result.output)
    run = json.loads(result.stdout)["runs"][0]
    uris = {a["location"]["uri"] for a in run["artifacts"]}
    assert {unquote_to_bytes(u) for u in uris} == {os.fsencode(f"{evil_folder.name}/{EVIL}")}


def test_archive_member_names_are_escaped(tmp_path):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr(f"arc{HOSTILE}/data.pkl", SYSTEM)
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as t:
        info = tarfile.TarInfo(f"member{HOSTILE}.pkl")
        info.size = len(SYSTEM)
        t.addfile(info, io.BytesIO(SYSTEM))
    (tmp_path / "a.zip").write_bytes(zipped.getvalue())
    (tmp_path / "b.tar").write_bytes(tarred.getvalue())
    result = invoke(["scan", str(tmp_path)])
    assert result.exit_code == 1
    assert_terminal_safe(result.output)
    findings = [line for line in result.stdout.splitlines() if line.startswith("  PK-I01")]
    assert len(findings) == 2 and all("x\\u000a\\u001b[2J" in line for line in findings), result.stdout
    members = {m for fr in json.loads(invoke(["scan", "--json", str(tmp_path)]).stdout)["files"]
               for f in fr["findings"] for m in f["location"]["members"]}
    # members (like messages and triggers) are escaped where a finding is made: SARIF message texts
    # quote them and CI logs print those texts; file paths stay exact
    assert members == {f"arc{printable(HOSTILE)}/data.pkl", f"member{printable(HOSTILE)}.pkl"}


def test_pickle_import_names_are_escaped(tmp_path):
    stream = (op.proto(4) + op.binunicode(f"os{HOSTILE}") + op.binunicode(f"system{HOSTILE}") + op.STACK_GLOBAL
              + op.binunicode("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    (tmp_path / "names.pkl").write_bytes(stream)
    result = invoke(["scan", "-v", "--explain", str(tmp_path / "names.pkl")])
    assert result.exit_code == 1
    assert_terminal_safe(result.output)
    name = f"os{printable(HOSTILE)}.system{printable(HOSTILE)}"
    lines = report_lines(result.stdout)
    assert len(lines) == 5, lines  # the file, its finding, its import (-v), the policy, the summary
    assert lines[1].startswith("  PK-I0") and name in lines[1]
    assert lines[2] == f"  import {name} [unknown] x1"


def test_safetensors_names_and_metadata_are_escaped(tmp_path):
    path = tmp_path / f"t{HOSTILE}.safetensors"
    path.write_bytes(model([(f"w{HOSTILE}", "F32", (1,))], metadata={f"k{HOSTILE}": f"v{HOSTILE}"}))
    for command in (["validate"], ["scan"], ["inspect"]):
        result = invoke([*command, str(path)])
        assert_terminal_safe(result.output)
        assert "\\u001b[2J" in result.output
    inspected = invoke(["inspect", str(path)]).stdout.splitlines()
    assert sum(line.startswith("w") for line in inspected) == 1  # the tensor's row is one line
    assert any(line.startswith("  k") and " = v" in line for line in inspected)
    data = json.loads(invoke(["inspect", "--json", str(path)]).stdout)
    assert data["metadata"] == {f"k{HOSTILE}": f"v{HOSTILE}"}
    assert [t["name"] for t in data["tensors"]] == [f"w{HOSTILE}"]


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_gguf_keys_and_keras_config_strings_are_escaped(tmp_path):
    key = _gguf_string(f"tokenizer.chat_template.{HOSTILE}") + struct.pack("<I", 8) + _gguf_string("{{ cycler.__init__ }}")
    (tmp_path / "t.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key)
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
              "config": {"name": "seq", "layers": [{"module": f"evil{HOSTILE}", "class_name": f"Lambda{HOSTILE}",
                                                    "config": {"name": f"l{HOSTILE}"}, "registered_name": None}]}}
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
    result = invoke(["scan", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert_terminal_safe(result.output)
    lines = report_lines(result.stdout)
    assert len(lines) == 6, lines  # two files, one finding each, the policy, the summary
    assert [line.split()[0] for line in lines if line.startswith("  ")] == ["KERAS-02", "GGUF-01"]


def test_a_typed_error_is_one_line(tmp_path):
    broken = tmp_path / f"broken{HOSTILE}.safetensors"
    broken.write_bytes(build({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, length=1000))
    result = invoke(["inspect", str(broken)])
    assert result.exit_code == 2
    assert_terminal_safe(result.output)
    line = one_error_line(result.stderr)
    assert line.startswith("tensorsafe: error: ") and "broken" + printable(HOSTILE) in line
    missing = invoke(["inspect", str(tmp_path / f"missing{HOSTILE}")])
    assert missing.exit_code == 2
    assert_terminal_safe(missing.output)
    one_error_line(missing.stderr)


def test_a_usage_error_is_one_line(tmp_path):
    result = invoke(["scan", str(tmp_path), f"-{HOSTILE}"])
    assert result.exit_code == 2
    assert_terminal_safe(result.output)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "unrecognized arguments" in errors[0] and printable(HOSTILE) in errors[0]


def test_convert_summary_escapes_paths_and_tensor_names(tmp_path):
    torch = pytest.importorskip("torch")
    shared = torch.zeros(2)
    src = tmp_path / f"src{HOSTILE}.pt"
    torch.save({f"w{HOSTILE}": shared, "b": shared, "c": torch.ones(1)}, src)
    result = invoke(["convert", str(src), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output
    assert_terminal_safe(result.output)
    assert report_lines(result.stdout)[0].startswith(f"converted {tmp_path}/src{printable(HOSTILE)}.pt -> ")
    assert "w" + printable(HOSTILE) in result.stdout


def test_convert_error_on_a_hostile_source_is_one_line(tmp_path):
    src = tmp_path / f"evil{HOSTILE}.ckpt"
    src.write_bytes(SYSTEM)
    result = invoke(["convert", str(src), str(tmp_path / "out.safetensors")])
    assert result.exit_code != 0
    assert_terminal_safe(result.output)
    one_error_line(result.stderr)


def test_progress_label_is_escaped():
    from tensorsafe.cli.progress import step_reporter

    stream = io.StringIO()
    reporter = step_reporter(stream=stream, label=f"render{HOSTILE}")
    assert reporter is not None
    reporter(1, 2)
    reporter(2, 2)
    assert_terminal_safe(stream.getvalue())
    assert len(stream.getvalue().splitlines()) == 2


def test_echo_lets_only_line_breaks_through(capsys):
    from tensorsafe.cli.output import echo

    controls = HOSTILE.replace("\n", "")  # echo cannot tell a name's newline from its own: callers escape lines
    echo(f"first{controls}\nsecond", err=True)
    assert capsys.readouterr().err == f"first{printable(controls)}\nsecond\n"
