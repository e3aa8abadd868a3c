"""Property tests for ``tensorsafe.scan``: no crash, no hang, and no "clean" the oracle disputes.

Every property scans bytes written to a file through the public API and then checks:

* **no crash** -- no exception escapes ``tensorsafe.scan`` (bad content becomes findings);
* **no hang** -- the scan returns within its own time limit plus slack (a hard alarm turns a
  real hang into a failure instead of a stuck CI job);
* **no false "clean"** -- when the verdict is clean, the oracle in ``tests/pickle_oracle.py``
  (an independent model of the C unpickler, of pickle.py as joblib uses it, and of the
  containers torch/numpy/joblib read) finds no import outside ``ALLOWED``/``BENIGN`` that a real
  loader would perform, and no import it cannot resolve.

The oracle can only vouch for imports the loader performs *before its first error*: after it
the loader raises and runs nothing. So a file whose stream breaks before any import may
legitimately scan clean when the scanner does not take it for a pickle (a text file that starts
with an opcode letter); a file the scanner does take for a pickle (it starts with ``PROTO``)
must not be clean when the loader cannot read it to its end (fail closed), which
``assert_fail_closed`` checks for breaks the walker cannot read past either (truncation,
invalid opcodes). Breaks on values (an INT the C loader rejects, a non-UTF-8 STRING under
``encoding="ASCII"``) are not asserted there: the walker is allowed to be more lenient than the
loader, and a loader that raises runs nothing.
"""
from __future__ import annotations

import collections
import functools
import gzip
import io
import json
import lzma
import os
import pickle
import signal
import struct
import tarfile
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.formats import to_json, to_sarif, to_text
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tests import pickle_ops as ops
from tests.pickle_oracle import analyse_file, run_stream
from tests.pickle_strategies import mutations, opcode_soup, payload_op

PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
LIMITS = tensorsafe.ScanLimits(timeout_seconds=3.0, max_decompressed_bytes=64 << 20)
SLACK_SECONDS = 5.0
HARD_TIMEOUT_SECONDS = 30
_TMP = tempfile.TemporaryDirectory(prefix="tensorsafe-props-")
TRUSTED = set(DEFAULT_POLICY.allowed) | set(DEFAULT_POLICY.benign)


class Hung(Exception):
    pass


@contextmanager
def hard_timeout(seconds: int):
    def on_alarm(signum, frame):
        raise Hung(f"scan still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def scan(data: bytes, *, explain: bool = False) -> tensorsafe.Report:
    """Scan ``data`` as a file; asserts no crash, bounded time and a well-formed report."""
    path = os.path.join(_TMP.name, "sample.bin")
    with open(path, "wb") as fh:
        fh.write(data)
    started = time.monotonic()
    with hard_timeout(HARD_TIMEOUT_SECONDS):
        report = tensorsafe.scan(path, policy=DEFAULT_POLICY, limits=LIMITS, explain=explain)
    elapsed = time.monotonic() - started
    assert elapsed < LIMITS.timeout_seconds + SLACK_SECONDS, f"scan took {elapsed:.1f} s"
    assert len(report.files) == 1
    assert report.verdict in ("clean", "fail", "error")
    assert report.exit_code == {"clean": 0, "fail": 1, "error": 2}[report.verdict]
    return report


def assert_oracle_agrees(data: bytes, report: tensorsafe.Report) -> None:
    """A clean verdict: no loader the oracle models performs an import outside the lists."""
    if report.verdict != "clean":
        return
    oracle = analyse_file(data)
    bad = [(m, n, where) for m, n, where in oracle.reachable_imports() if (m, n) not in TRUSTED]
    assert not bad, f"scanned clean, but a loader imports {bad} ({report.files[0].kind})"
    unresolved = oracle.unresolved()
    assert not unresolved, f"scanned clean, but a loader imports names known only at load time: {unresolved}"


def assert_fail_closed(data: bytes, report: tensorsafe.Report, label: str, stream) -> None:
    """A stream the scanner must read as a pickle, which the loader cannot read to its end for a
    reason no parser can read past (it ends early, an invalid opcode, a line without newline, a
    count past the end), is never clean."""
    if report.verdict == "clean" and not stream.stopped and not stream.incomplete:
        assert not stream.structural, \
            f"{label} breaks at {stream.break_offset} ({stream.reason}) but the file scanned clean"


def sniffs_as_pickle(data: bytes) -> bool:
    """PROTO 0-5 and at least one more byte: the scanner must read it as a pickle (sniff.py)."""
    return len(data) > 2 and data[0] == 0x80 and data[1] <= 5


def check(data: bytes, *, explain: bool = False) -> tensorsafe.Report:
    report = scan(data, explain=explain)
    if report.verdict == "clean" and known_bug(data):
        reject()
    assert_oracle_agrees(data, report)
    return report


def known_bug(data: bytes) -> str | None:
    """Inputs that hit an open bug (an xfail test at the end of this file) or the documented
    residual risk: the properties set them aside so that they keep guarding everything else.
    Delete an entry when its bug is fixed."""
    c = run_stream(data, 0, mode="c")
    if c.imports and not c.stopped and all(not _taken_for_import(m, n) for m, n, _ in c.imports):
        first = {m.split(".")[0] for m, _, _ in c.imports}
        if all(not _taken_for_import(f, "") for f in first):
            return "module file name with characters beyond [A-Za-z0-9_-]: the residual risk in docs/threat-model.md"
    return None


def _taken_for_import(module: str, name: str) -> bool:
    """The scanner's rule (pickle_stream._importable): the first dotted part of the module is
    non-empty and made of identifier characters and ``-`` (digits first too)."""
    first = module.split(".")[0]
    return bool(first) and ("_" + first.replace("-", "_")).isidentifier()


def _truncated_stream(data: bytes) -> bool:
    """A zlib or LZMA-alone stream that decompresses to something but has no end of stream."""
    d = zlib.decompressobj() if data[:1] == b"x" else lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    try:
        out = d.decompress(data, 1 << 20)
    except (zlib.error, lzma.LZMAError):
        return False
    return bool(out) and not d.eof


def _cut_short_at_eof(data: bytes, offset: int) -> bool:
    """A GLOBAL/INST at the end of the data whose name line is missing altogether."""
    if data[offset:offset + 1] not in (b"c", b"i"):
        return False
    nl = data.find(b"\n", offset)
    return nl < 0 or nl == len(data) - 1


# -- 1. random bytes and opcode soups ---------------------------------------------------------
MAGICS = [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"\x93NUMPY\x01\x00",
          b"\x80\x02", b"\x80\x05", b"x\x9c", b"\x5d\x00\x00", b"c", b"(", b"\x08\x00\x00\x00\x00\x00\x00\x00{"]


@settings(max_examples=250, **PROPS)
@given(st.sampled_from(MAGICS), st.binary(max_size=96))
@example(b"", b"")
@example(b"\x1f\x8b\x08", b"")
def test_random_bytes_never_crash_hang_or_pass_a_payload(magic, tail):
    """Arbitrary bytes behind each container's magic: every reader must fail gracefully."""
    check(magic + tail)


@settings(max_examples=300, **PROPS)
@given(opcode_soup())
@example(ops.call_system())
@example(b"\x80\x02" + ops.unicode_("os") + b"q\x00" + ops.unicode_("system") + b"h\x00h\x00\x93.")
def test_opcode_soups_never_pass_a_reachable_import(data):
    """Streams built from GLOBAL/STACK_GLOBAL/INST, memo ops, MARK, TUPLE, REDUCE, BUILD, frames, ...
    with allowed, benign, unknown and dangerous names: clean only if no loader reaches a bad one."""
    report = check(data)
    if sniffs_as_pickle(data) and report.files[0].kind == "pickle":
        assert_fail_closed(data, report, "stream 0", run_stream(data, 0, mode="c"))


@settings(max_examples=120, **PROPS)
@given(opcode_soup())
def test_reports_render_for_any_stream(data):
    """Text, JSON and SARIF render whatever names a stream holds, and the text can be printed
    (encoded as UTF-8, as ``click.echo`` does), with ``--explain`` (fickling) too."""
    report = scan(data, explain=True)
    text = to_text(report, verbose=True)
    json.dumps(to_json(report))
    json.dumps(to_sarif(report))
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        reject()  # known: test_bug_cli_crashes_on_surrogate_names
    text.encode("utf-8")


DESCRS = st.one_of(
    st.sampled_from(["|O", "<f8", "O", "f8,O", "O4", "V0", "S0", "U", "b1", "(2,)O", "M8[D]", "[", "'", "0)", "2)i4",
                     "(99999999999999999999,)i4", "i4)", "1(", ""]),
    st.lists(st.sampled_from(["|O", "<f8", "0", ")", "(", ",", "2", "i4", "[", "]", "O"]), min_size=1, max_size=5)
    .map("".join),
    st.lists(st.tuples(st.sampled_from(["a", "b", ""]), st.sampled_from(["|O", "<f8", "O", "0)"])), max_size=3),
    st.lists(st.tuples(st.text(max_size=2), st.sampled_from(["|O", "<i4"]), st.tuples(st.integers(-1, 3))),
             max_size=2),
)


def npy_bytes(descr, shape, version: int, body: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("utf-8" if version == 3 else
                                                                                   "latin-1", "replace")
    header += b" " * (-(len(header) + 13) % 64) + b"\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + body


def _numpy_raises_syntax_error(descr) -> bool:
    from numpy.lib import format as npformat

    try:
        npformat.descr_to_dtype(descr)
    except SyntaxError:
        return True
    except Exception:
        return False
    return False


@settings(max_examples=120, **PROPS)
@given(DESCRS, st.sampled_from([(), (2,), (0,), (-1,), (1, 2), [2], "2"]), st.sampled_from([1, 2, 3]),
       st.sampled_from([b"", pickle.dumps([1, "a"], protocol=2), ops.call_system(), b"\x00" * 8]))
def test_npy_headers_never_crash_or_pass_a_payload(descr, shape, version, body):
    """``.npy`` headers with odd dtypes (structured, sub-array, datetime, malformed comma strings)
    and shapes, followed by a benign pickle, a payload or raw bytes: never a crash; the object
    array's pickle is judged whenever numpy.load would unpickle it."""
    if _numpy_raises_syntax_error(descr):
        reject()  # open: test_bug_npy_descr_syntax_error_escapes_scan
    check(npy_bytes(descr, shape, version, body))


# -- 2. mutated real files --------------------------------------------------------------------
PLAIN = {"list": [1, 2.5, "x", b"y", None, True], "tuple": (1, (2, 3)), "set": {1, 2},
         "od": collections.OrderedDict(a=1), "nested": {"k": [{"v": b""}]}}


@functools.lru_cache(maxsize=None)
def corpus() -> dict[str, bytes]:
    """Small benign files written by the real libraries (trusted code writing known-good files)."""
    import joblib
    import numpy as np
    import torch

    sd = collections.OrderedDict(w=torch.arange(4, dtype=torch.float32).reshape(2, 2),
                                 h=torch.ones(3, dtype=torch.float16))
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save(sd, buf)
    files["torch-zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    files["torch-legacy"] = buf.getvalue()
    for p in range(6):
        files[f"pickle-p{p}"] = pickle.dumps(PLAIN, protocol=p)
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a", None, {"k": 2.5}], dtype=object), allow_pickle=True)
    files["npy-object"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, o=np.array([1, "a"], dtype=object), f=np.ones(2))
    files["npz-object"] = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = pickle.dumps(PLAIN, protocol=4)
        info = tarfile.TarInfo("model/model.pkl")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    files["tar-pickle"] = buf.getvalue()
    files["gzip-pickle"] = gzip.compress(pickle.dumps(PLAIN, protocol=2), mtime=0)
    value = {"x": np.arange(6, dtype=np.float64), "o": np.array([1, "a"], dtype=object), "n": ["a", 1]}
    for name, compress in (("joblib", 0), ("joblib-zlib", 3)):
        path = os.path.join(_TMP.name, f"{name}.joblib")
        joblib.dump(value, path, compress=compress)
        with open(path, "rb") as fh:
            files[name] = fh.read()
    return files


@functools.lru_cache(maxsize=None)
def boundaries(name: str) -> list[int]:
    """Opcode offsets of the pickle streams in a raw (non-archive) corpus file, by the oracle."""
    data = corpus()[name]
    found: list[int] = []
    if name.startswith("pickle") or name == "torch-legacy":
        pos = 0
        for _ in range(5 if name == "torch-legacy" else 1):
            found += _op_offsets(data, pos, "c")
            stream = run_stream(data, pos, mode="c")
            pos = stream.end
    elif name == "joblib":
        found = _op_offsets(data, 0, "py")
    return found


def _op_offsets(data: bytes, start: int, mode: str) -> list[int]:
    stream = run_stream(data, start, mode=mode, joblib=mode == "py")
    return stream.ops if stream.stopped else stream.ops[:-1]


def raw_pickle_names() -> list[str]:
    return [f"pickle-p{p}" for p in range(6)] + ["torch-legacy"]


@settings(max_examples=300, **PROPS)
@given(st.sampled_from(sorted(corpus())), st.data())
def test_mutated_real_files(name, data):
    """Benign files from torch.save (zip and legacy), pickle.dumps (protocols 0-5, raw, in a tar,
    gzipped), np.save and np.savez of object arrays and joblib.dump (plain and zlib), with 1-3 byte edits: flips,
    truncation, insertion, deletion, overwrites and spliced payloads (at random offsets and at
    opcode boundaries). Never a crash or hang; clean only if the oracle finds nothing to run."""
    base = corpus()[name]
    _, mutate = data.draw(mutations(len(base), boundaries(name) or None), label="mutation")
    mutated = mutate(base)
    report = check(mutated)
    if name in raw_pickle_names() and report.files[0].kind in ("pickle", "pytorch-legacy"):
        assert_fail_closed(mutated, report, "stream 0", run_stream(mutated, 0, mode="c"))


@settings(max_examples=120, **PROPS)
@given(st.sampled_from(raw_pickle_names() + ["joblib"]), st.data())
def test_payload_spliced_at_an_opcode_boundary_fails(name, data):
    """A balanced payload (``os.system("true")`` then POP) inserted between two opcodes of a
    benign stream runs when the file is loaded and leaves the rest loadable: always "fail"."""
    base = corpus()[name]
    pos = data.draw(st.sampled_from(boundaries(name)), label="offset")
    payload = data.draw(payload_op, label="payload")
    mutated = base[:pos] + payload + base[pos:]
    report = scan(mutated)
    assert report.verdict == "fail", [str(f) for f in report.findings]


def _rezip(original: bytes, member_filter, mutate) -> bytes:
    """The archive again, with each member chosen by ``member_filter`` rewritten by ``mutate``."""
    src = zipfile.ZipFile(io.BytesIO(original))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if member_filter(info.filename):
                body = mutate(body)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), body)
    return out.getvalue()


def _member(archive: bytes, suffix: str) -> bytes:
    zf = zipfile.ZipFile(io.BytesIO(archive))
    return zf.read(next(n for n in zf.namelist() if n.endswith(suffix)))


ARCHIVED_PICKLES = {"torch-zip": "data.pkl", "npz-object": "o.npy", "joblib-zlib": None}
"""Archive in the corpus -> the member holding the pickle (``None``: the zlib stream itself)."""


@settings(max_examples=150, **PROPS)
@given(st.sampled_from(sorted(ARCHIVED_PICKLES)), st.data())
def test_mutated_members_of_archives(name, data):
    """The pickle inside a well-formed container is edited and the container rebuilt (zip with
    correct sizes and CRCs; zlib recompressed), so the container checks cannot catch it: the
    pickle itself must be judged. Clean only if the oracle agrees, and never clean when the
    member a loader unpickles is cut short or holds an invalid opcode."""
    base, suffix = corpus()[name], ARCHIVED_PICKLES[name]
    inner = zlib.decompress(base) if suffix is None else _member(base, suffix)
    _, mutate = data.draw(mutations(len(inner)), label="mutation")
    if suffix is None:
        mutated = zlib.compress(mutate(inner))
        member = zlib.decompress(mutated)
    else:
        mutated = _rezip(base, lambda n: n.endswith(suffix), mutate)
        member = _member(mutated, suffix)
    report = scan(mutated)
    if report.verdict == "clean" and known_bug(member):
        reject()
    assert_oracle_agrees(mutated, report)
    if name == "torch-zip":  # torch.load unpickles data.pkl, whatever it starts with
        assert_fail_closed(mutated, report, suffix, run_stream(member, 0, mode="c"))
    elif name == "joblib-zlib" and sniffs_as_pickle(member):
        assert_fail_closed(mutated, report, "joblib stream", run_stream(member, 0, mode="py", joblib=True))


DEEP = {  # shape -> (stream of nesting depth d, verdicts allowed)
    "tuples": (lambda d: b"\x80\x04N" + b"\x85" * d + b".", {"clean"}),
    "lists": (lambda d: b"\x80\x04" + b"]" * d + b"a" * (d - 1) + b".", {"clean"}),
    "marks": (lambda d: b"(" * d + b"t" * d + b".", {"clean"}),
    "dict keys": (lambda d: b"\x80\x04}N" + b"\x85" * d + b"Ns.", {"clean", "error"}),
    "calls": (lambda d: b"\x80\x02" + ops.global_("builtins", "frozenset") * d + b")" + b"R\x85" * (d - 1) + b"R.",
              {"clean"}),
    "computed import": (lambda d: b"\x80\x04" + ops.global_("builtins", "str") + b")R" + b"N" + b"\x85" * d
                        + b"\x93.", {"fail", "error"}),
    "payload in deep args": (lambda d: b"\x80\x02" + ops.global_("os", "system") + b"N" + b"\x85" * d + b"R.",
                             {"fail"}),
}


@settings(max_examples=24, **PROPS)
@given(st.sampled_from(sorted(DEEP)), st.sampled_from([1, 2, 1000, 5000, 20_000]))
def test_deeply_nested_values_never_crash(shape, depth):
    """Values nested far deeper than Python's recursion limit (tuples, lists, marks, dict keys,
    call chains, a computed import whose operand is a deep tuple, a payload with deep arguments):
    the verdict these streams deserve, never a crash -- with fickling's decompiled view asked for.
    (Nesting deep enough to overflow the C stack is test_bug_deep_tuple_hash_crashes_the_scanner.)"""
    build, verdicts = DEEP[shape]
    report = scan(build(depth), explain=True)
    assert report.verdict in verdicts, [str(f) for f in report.findings[:3]]


# -- 4. zip structure ---------------------------------------------------------------------------
LOCAL_FIELDS = {"flags": (6, "H"), "method": (8, "H"), "crc": (14, "I"), "csize": (18, "I"), "usize": (22, "I"),
                "name_len": (26, "H"), "extra_len": (28, "H")}
CENTRAL_FIELDS = {"flags": (8, "H"), "method": (10, "H"), "crc": (16, "I"), "csize": (20, "I"), "usize": (24, "I"),
                  "name_len": (28, "H"), "extra_len": (30, "H"), "comment_len": (32, "H"), "offset": (42, "I")}
EOCD_FIELDS = {"disk_entries": (8, "H"), "entries": (10, "H"), "cd_size": (12, "I"), "cd_offset": (16, "I"),
               "comment_len": (20, "H")}


def zip_records(data: bytes) -> tuple[int, list[tuple[int, int, str]]]:
    """(EOCD offset, [(central entry offset, local header offset, name)]) of a well-formed zip."""
    eocd = data.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<I", data, eocd + 16)[0]
    entries, p = [], cd_offset
    while data[p:p + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", data, p + 28)
        entries.append((p, struct.unpack_from("<I", data, p + 42)[0], data[p + 46:p + 46 + n].decode()))
        p += 46 + n + m + k
    return eocd, entries


@st.composite
def zip_edit(draw, data: bytes):
    eocd, entries = zip_records(data)
    where = draw(st.sampled_from(["local", "central", "eocd", "local name", "central name"]))
    central, local, name = entries[draw(st.integers(0, len(entries) - 1))]
    if where.endswith("name"):
        base = (local + 30) if where == "local name" else (central + 46)
        i = draw(st.integers(0, len(name) - 1))
        new = draw(st.sampled_from([b"X", b"/", b"\\", b".", b"\x00", b"\xff"]))
        return f"{where} of {name!r}[{i}] = {new!r}", base + i, new
    record, fields = {"local": (local, LOCAL_FIELDS), "central": (central, CENTRAL_FIELDS),
                      "eocd": (eocd, EOCD_FIELDS)}[where]
    field = draw(st.sampled_from(sorted(fields)))
    offset, fmt = fields[field]
    old = struct.unpack_from("<" + fmt, data, record + offset)[0]
    top = 0xFFFF if fmt == "H" else 0xFFFFFFFF
    new_value = draw(st.sampled_from([0, 1, old + 1, old - 1, old ^ 1, old ^ 8, top]) | st.integers(0, top)) & top
    return f"{where} {field} of {name!r}: {old} -> {new_value}", record + offset, struct.pack("<" + fmt, new_value)


@settings(max_examples=200, **PROPS)
@given(st.sampled_from(["torch-zip", "npz-object"]), st.data())
def test_zip_header_mutations(name, data):
    """Names, sizes, CRCs, flags, methods, offsets and counts of the local headers, the central
    directory and its end record, one or two at a time. Never a crash or hang; never clean when
    zipfile cannot read the archive or one of its pickles as a loader would (a torch.load of it
    would fail, or read something else); clean only if the oracle agrees on every pickle."""
    base = corpus()[name]
    edits = data.draw(st.lists(zip_edit(base), min_size=1, max_size=2), label="edits")
    mutated = base
    for _, offset, new in edits:
        mutated = mutated[:offset] + new + mutated[offset + len(new):]
    report = check(mutated)
    if report.verdict != "clean":
        return
    zf = zipfile.ZipFile(io.BytesIO(mutated))  # raises: a directory zipfile cannot read scanned clean
    for info in zf.infolist():
        if info.filename.endswith((".pkl", ".npy")):
            body = zf.read(info)  # raises on a CRC or header mismatch that scanned clean
            if info.filename.endswith(".pkl"):
                assert_fail_closed(mutated, report, info.filename, run_stream(body, 0, mode="c"))


# -- regressions: bugs these properties found ---------------------------------------------------
# Fixed ones stay as plain tests. Open ones are xfail(strict) with the minimal reproducer: remove
# the mark (and the matching entry in known_bug) when the product is fixed.
PAYLOAD = ops.global_("os", "system") + b"(" + ops.string("true") + b"tR0"
"""``os.system("true")``, result popped: the stack is as it was before."""


def _su(text: str) -> bytes:
    return ops.unicode_(text)


def _joblib_wrapper_state(n: int, code: str = "u1") -> bytes:
    """BUILD state of a joblib NumpyArrayWrapper for ``n`` elements of ``code`` (no alignment padding)."""
    return (b"}(" + _su("subclass") + _su("numpy") + _su("ndarray") + b"\x93" + _su("shape") + b"K" + bytes([n])
            + b"\x85" + _su("order") + _su("C") + _su("dtype") + _su("numpy") + _su("dtype") + b"\x93" + _su(code)
            + b"\x89\x88\x87R(K\x03" + _su("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK"
            + bytes([63 if code == "O" else 0]) + b"tb"  # numpy's flags: 63 for object dtypes
            + _su("allow_mmap") + b"\x89ub")


WRAPPER = _su("joblib.numpy_pickle") + _su("NumpyArrayWrapper") + b"\x93"


def assert_fails(data: bytes) -> None:
    report = scan(data)
    assert report.verdict == "fail", (report.files[0].kind, [str(f) for f in report.findings])


# fixed ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", [b"I1\x00x\n", b"L1\x00\n", b"F1.5\x00junk\n", b"Np0\x00\n", b"Np0\n0g0\x00\n"])
def test_nul_in_number_line_does_not_hide_payload(line):
    """C parses INT/LONG/FLOAT/GET/PUT lines as NUL-terminated C strings ('I1\\x00x\\n' is 1): a
    walker that rejected them took such a protocol-0 stream for a text file while pickle.load ran it."""
    assert_fails(line + b"0" + PAYLOAD + b"N.")


def test_short_frame_does_not_hide_payload():
    """pickle.py (joblib.load) reads a FRAME longer than the rest of the file as a short frame and
    runs its opcodes; a walker that stopped at it as truncated took the stream for a text file."""
    body = PAYLOAD + b"N."
    assert_fails(b"\x95" + struct.pack("<Q", len(body) + 100) + body)


def test_import_of_a_name_that_is_no_identifier_is_not_taken_for_text():
    """The import system imports any file name on sys.path ('^x.py'), not just identifiers: a repo
    shipping model.pkl and ^x.py runs code when loaded from its folder."""
    report = scan(b"c^x\nrun\n(tR\xff")
    assert report.verdict != "clean", report.files[0].kind


def test_deep_tuple_hash_does_not_crash_the_scanner():
    """A 2 MB pickle whose dict key is a tuple nested 2,000,000 deep: CPython hashes nested tuples
    recursively in C with no recursion guard, which killed the scanning process (SIGSEGV)."""
    import subprocess
    import sys

    path = os.path.join(_TMP.name, "deep-key.pkl")
    with open(path, "wb") as fh:
        fh.write(b"\x80\x04}N" + b"\x85" * 2_000_000 + b"Ns.")
    code = ("import sys, tensorsafe; from tensorsafe.pickles.policy import DEFAULT_POLICY; "
            "print(tensorsafe.scan(sys.argv[1], policy=DEFAULT_POLICY).verdict)")

    def eight_mib_stack() -> None:  # the usual default; an unlimited stack would only move the threshold
        import resource

        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, 8 << 20))

    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=120,
                          preexec_fn=eight_mib_stack)
    assert done.returncode == 0, f"scanner died with {done.returncode}: {done.stderr[-300:]}"
    assert done.stdout.strip() != "clean"


def test_cli_survives_surrogate_names():
    """BINUNICODE is decoded with surrogatepass: a lone surrogate in a name made `tensorsafe scan`
    crash in click.echo (UnicodeEncodeError, traceback) and lose the report."""
    from tests.cli_runner import invoke


    path = os.path.join(_TMP.name, "surrogate.pkl")
    with open(path, "wb") as fh:
        fh.write(b"\x80\x04X\x05\x00\x00\x00os\xed\xa0\x80" + _su("system") + b"\x93)R.")
    result = invoke(["scan", path])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1


@pytest.mark.parametrize("build", ["dict", "setitem", "additems", "frozenset"])
def test_dict_keys_nested_64_deep_still_fail_a_payload(build):
    """The boundary of the walker's key-nesting limit: up to it, the payload after is judged."""
    assert_fails(_nested_key_stream(build, 64))


def _nested_key_stream(build: str, depth: int) -> bytes:
    """A protocol-0 stream that first uses a ``depth``-deep tuple as a dict key or set item, then
    runs the payload: the C loader hashes such a small tuple without trouble and goes on."""
    key = b"N" + b"\x85" * depth
    first = {"dict": b"(" + key + b"Nd0", "setitem": b"(d" + key + b"Ns0",
             "additems": b"\x8f(" + key + b"\x900", "frozenset": b"(" + key + b"\x910"}[build]
    return first + PAYLOAD + b"N."


# open -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", ["dict", "setitem", "additems", "frozenset"])
def test_bug_key_nesting_limit_hides_payload(build):
    assert_fails(_nested_key_stream(build, 65))


def test_bug_int_line_starting_with_nul_hides_payload():
    assert_fails(b"I\x00\n0" + PAYLOAD + b"N.")


@pytest.mark.parametrize("compress", ["zlib", "lzma-alone"])
def test_bug_compressed_stream_without_end_hides_payload(compress):
    if compress == "zlib":
        data = zlib.compress(ops.call_system())[:-4]
    else:
        data = lzma.compress(ops.call_system(), format=lzma.FORMAT_ALONE)[:-6]
    assert_fails(data)


def test_bug_joblib_array_bytes_are_opcodes_for_pickle_load():
    assert_fails(b"\x80\x04" + WRAPPER + b")\x81" + _joblib_wrapper_state(len(PAYLOAD)) + PAYLOAD + b".")


def test_bug_joblib_rest_of_frame_after_wrapper_is_skipped():
    body = WRAPPER + b")\x81" + _joblib_wrapper_state(4) + PAYLOAD
    assert_fails(b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body + b"N0N0" + b".")


def test_bug_joblib_wrapper_made_by_copyreg_reconstructor():
    tail = b"0" + PAYLOAD + b"N."                           # what joblib runs after the array
    array = b"." + b"B" + struct.pack("<I", len(tail) - 1)  # what the walker sees instead: STOP, then bytes
    assert_fails(b"\x80\x04" + _su("copyreg") + _su("_reconstructor") + b"\x93(" + WRAPPER + _su("builtins")
                 + _su("object") + b"\x93NtR" + _joblib_wrapper_state(len(array)) + array + tail)


def test_bug_joblib_hook_applied_inside_object_array_pickle():
    nested = b"\x80\x04" + WRAPPER + b")\x81" + _joblib_wrapper_state(len(PAYLOAD)) + PAYLOAD + b"."
    assert_fails(b"\x80\x04" + WRAPPER + b")\x81" + _joblib_wrapper_state(1, "O") + nested + b".")


def test_bug_global_without_name_line_at_eof():
    report = scan(b"cantigravity\n")
    assert report.verdict != "clean", report.files[0].kind


def test_bug_npy_descr_syntax_error_escapes_scan():
    report = scan(npy_bytes("0)", (), 1, b""))
    assert report.verdict == "error"


@pytest.mark.parametrize("stream", [b"cevil\nrun now\n\xff", b"cevil.\nrun\n\xff", b"cevil..x\nrun\n\xff"])
def test_bug_module_import_hidden_by_rest_of_name(stream):
    report = scan(stream)
    assert report.verdict != "clean", report.files[0].kind


def test_bug_joblib_outer_stream_resumes_after_nested_frame():
    """joblib's object-array unpickler reads whole frames from the file: when that pickle's last frame
    runs past its STOP, the outer stream goes on after the frame, not after STOP (the frame's leftover
    here is a BINBYTES header that would swallow the payload joblib runs)."""
    payload = b"0" + PAYLOAD + b"N"
    inner_body = b"N." + b"B" + struct.pack("<I", len(payload))
    inner = b"\x80\x04\x95" + struct.pack("<Q", len(inner_body)) + inner_body
    assert_fails(b"\x80\x04" + WRAPPER + b")\x81" + _joblib_wrapper_state(1, "O") + inner + payload + b".")


def test_bug_backslash_module_name_taken_for_text():
    report = scan(b"cx\\y\nrun\n(tR\xff")
    assert report.verdict != "clean", report.files[0].kind


def test_bug_text_report_prints_control_characters():
    data = b"\x80\x04" + _su("os") + _su("system\r\x1b[2K\x1b[32mclean\x1b[0m") + b"\x93)R."
    text = to_text(scan(data), verbose=True)
    assert "\x1b" not in text and "\r" not in text
