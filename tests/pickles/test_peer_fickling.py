"""Conformance with trailofbits/fickling's test suite and its attack tooling.

fickling (a runtime dependency: ``--explain`` uses its decompiler) is used here only to BUILD
hostile files: its opcode classes for the advisory cases of ``test/test_bypasses.py``, its
injection helpers (``Pickled.insert_python_exec``, ``insert_python``,
``insert_function_call_on_unpickled_object``, ``PyTorchModelWrapper.inject_payload``,
``StackedPickle``), its polyglot builders (``fickling.polyglot.create_polyglot``) and its format
identification, to show a fixture is the format fickling says it is. Nothing is ever loaded:
every file is only written and scanned. Payloads are harmless (``os.system("true")``).

Covered: every import fickling calls unsafe (``fickle.UNSAFE_IMPORTS``, ``UnsafeImportsML``)
and its scanner-deactivation modules fail, as known dangerous (PK-I01); its advisory bypasses;
operator/functools/getattr gadgets; ``__reduce__`` chains; nested pickles; FRAME differentials
(python/cpython#154848); memo/DUP expansion and cyclic pickles; injected PyTorch files (data.pkl
insertion, a second pickle appended, extra pickle members, legacy files); the polyglots fickling
builds (PyTorch v1.3 + TorchScript, MAR + legacy pickle, MAR + legacy tar, zip + pickle) and
numpy files; fickling's benign cases (``torch.save`` of a state dict, well-formed frames) stay clean.

Found and fixed here: fickling's unsafe modules that were merely unknown (PK-I02; a policy file
could allow them) are known dangerous (PK-I01); a TorchServe archive's Python code fails (ZIP-10;
it was clean); ``--explain`` of a failing billion-laughs pickle no longer expands it for minutes;
the restricted reader refuses ``bytearray(10**12)`` (a traceback or an allocation before).

Where we differ from fickling on purpose: a FRAME that ends exactly between an opcode's header
and its payload is read the same by every CPython unpickler (fickling flags it as "stricter than
CPython"): no differential, so no PK-S06. Memo/DUP "billion laughs" pickles hold shared
references that every unpickler builds in linear memory: clean, as ``torch.load`` reads them.
"""
from __future__ import annotations

import io
import marshal
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

# a dependency of tensorsafe (pyproject [project].dependencies, fickling>=0.1.3); these tests build with
# the injection, polyglot and unsafe-list APIs of 0.1.12, the version they were checked against
fickling = pytest.importorskip("fickling", minversion="0.1.12")
torch = pytest.importorskip("torch")

import fickling.fickle as fk  # noqa: E402
import fickling.polyglot as polyglot  # noqa: E402
from fickling.analysis import UnsafeImportsML  # noqa: E402
from fickling.fickle import Pickled, StackedPickle  # noqa: E402
from fickling.pytorch import PyTorchModelWrapper  # noqa: E402

import tensorsafe  # noqa: E402
from tensorsafe.errors import ParseError, PolicyFileError, TensorsafeError  # noqa: E402
from tensorsafe.pickles.policy import DEFAULT_POLICY  # noqa: E402
from tests import pickle_ops as op  # noqa: E402
from tests.conftest import rule_ids  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning:fickling.pytorch")]
SYSTEM = op.proto(2) + op.global_("os", "system") + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP
PAYLOAD = "__import__('os').system('true')"


def _ops(*opcodes: fk.Opcode) -> bytes:
    return Pickled(list(opcodes)).dumps()


def _call(module: str, name: str, *args: str | bytes) -> list[fk.Opcode]:
    """``module.name(*args)`` by STACK_GLOBAL and REDUCE, in fickling's opcode classes."""
    pushed = [fk.ShortBinUnicode(a) if isinstance(a, str) else fk.ShortBinBytes(a) for a in args]
    tuple_op = {0: fk.EmptyTuple, 1: fk.TupleOne, 2: fk.TupleTwo, 3: fk.TupleThree}[len(args)]
    return [fk.ShortBinUnicode(module), fk.ShortBinUnicode(name), fk.StackGlobal(), *pushed, tuple_op(), fk.Reduce()]


def _fails(report: tensorsafe.Report, *rules: str) -> None:
    assert report.exit_code == 1, [str(f) for f in report.findings]
    assert set(rules) <= rule_ids(report), [str(f) for f in report.findings]


def _not_clean(report: tensorsafe.Report) -> None:
    assert report.exit_code != 0, [str(f) for f in report.findings]


def _clean(report: tensorsafe.Report) -> None:
    assert report.exit_code == 0 and not report.findings, [str(f) for f in report.findings]


# -- test_bypasses.py: the advisories, rebuilt with fickling's opcodes -------------------------------
ADVISORIES = {
    # GHSA-r7v6-mfhq-g3m2: pty was missing from fickling's unsafe list
    "pty-spawn": (_ops(fk.Proto.create(4), *_call("pty", "spawn", "true"), fk.ShortBinUnicode("gottem"), fk.Build(),
                       fk.Stop()), "PK-I01"),
    # fickling PR 108: OBJ with a GLOBAL inside the mark
    "pty-obj": (_ops(fk.Mark(), fk.Global.create("pty", "spawn"), fk.ShortBinUnicode("true"), fk.Obj(), fk.Stop()),
                "PK-I01"),
    # GHSA-565g-hwwr-4pp3: marshal.loads + types.FunctionType
    "marshal-types": (_ops(
        fk.Proto.create(4), fk.ShortBinUnicode("marshal"), fk.ShortBinUnicode("loads"), fk.StackGlobal(),
        fk.ShortBinBytes(marshal.dumps(compile("import os\nos.system('true')", "<s>", "exec"))), fk.TupleOne(),
        fk.Reduce(), fk.Memoize(), fk.ShortBinUnicode("types"), fk.ShortBinUnicode("FunctionType"), fk.StackGlobal(),
        fk.BinGet(0), fk.EmptyDict(), fk.TupleTwo(), fk.Reduce(), fk.EmptyTuple(), fk.Reduce(), fk.Stop()), "PK-I01"),
    # GHSA-wfq2-52f7-7qvj, GHSA-q5qq-mvfm-j35x, GHSA-p523-jq9w-64x9
    "runpy-run_path": (_ops(fk.Proto.create(5), *_call("runpy", "run_path", "/tmp/x.py"), fk.Stop()), "PK-I01"),
    "cProfile-run": (_ops(fk.Proto.create(5), *_call("cProfile", "run", "print(1)"), fk.Stop()), "PK-I01"),
    # GHSA-5hvc-6wx8-mvv4: getattr(ctypes.CDLL(...), "system"), pydoc.locate("os.system")
    "getattr-ctypes": (_ops(fk.Proto.create(5), fk.ShortBinUnicode("builtins"), fk.ShortBinUnicode("getattr"),
                            fk.StackGlobal(), *_call("ctypes", "CDLL", "libc.so.6"), fk.ShortBinUnicode("system"),
                            fk.TupleTwo(), fk.Reduce(), fk.ShortBinBytes(b"true"), fk.TupleOne(), fk.Reduce(),
                            fk.Stop()), "PK-I01"),
    "pydoc-locate": (_ops(fk.Proto.create(5), *_call("pydoc", "locate", "os.system"), fk.ShortBinUnicode("true"),
                          fk.TupleOne(), fk.Reduce(), fk.Stop()), "PK-I01"),
    "importlib-import_module": (_ops(fk.Proto.create(5), *_call("importlib", "import_module", "os"), fk.Stop()),
                                "PK-I01"),
    "code-InteractiveInterpreter": (_ops(fk.Proto.create(5), *_call("code", "InteractiveInterpreter"), fk.Stop()),
                                    "PK-I01"),
    "multiprocessing-spawnv_passfds": (_ops(fk.Proto.create(5), *_call("multiprocessing.util", "spawnv_passfds",
                                                                       b"/bin/sh"), fk.Stop()), "PK-I01"),
    # GHSA-h4rm-mm56-xf63: __import__ then getattr through the memo (protocol 0 PUT/GET)
    "builtins-import-getattr": (_ops(
        fk.Global.create("builtins", "__import__"), fk.String("os"), fk.TupleOne(), fk.Reduce(), fk.Put(0), fk.Pop(),
        fk.Global.create("builtins", "getattr"), fk.Get.create(0), fk.String("system"), fk.TupleTwo(), fk.Reduce(),
        fk.String("true"), fk.TupleOne(), fk.Reduce(), fk.Stop()), "PK-I01"),
    "builtins-eval": (_ops(fk.Global.create("builtins", "eval"), fk.String("1"), fk.TupleOne(), fk.Reduce(),
                           fk.Stop()), "PK-I01"),
    # picklescan GHSA-955r-x9j8-7rhh: _operator.methodcaller
    "_operator-methodcaller": (_ops(fk.Proto.create(4), *_call("_operator", "methodcaller", "system", "true"),
                                    fk.Stop()), "PK-I01"),
    # picklescan GHSA-m273-6v24-x4m4, GHSA-r8g5-cgf2-4m4m, and _io.FileIO
    "distutils-write_file": (_ops(fk.Proto.create(4), *_call("distutils.file_util", "write_file", "/tmp/x", "y"),
                                  fk.Stop()), "PK-I01"),
    "numpy-f2py-getlincoef": (_ops(fk.Proto.create(4), *_call("numpy.f2py.crackfortran", "getlincoef", PAYLOAD),
                                   fk.Stop()), "PK-I01"),
    "_io-FileIO": (_ops(fk.Proto.create(4), *_call("_io", "FileIO", "/etc/passwd"), fk.Stop()), "PK-I01"),
    # picklescan GHSA-f7qq-56ww-84cr: a dotted name inside asyncio
    "asyncio-subprocess": (_ops(fk.Proto.create(4), *_call("asyncio.unix_events", "_UnixSubprocessTransport._start"),
                                fk.Stop()), "PK-I01"),
    # GHSA-mxhj-88fx-4pcv: an OBJ call dropped by POP is still a call
    "obj-pop": (_ops(fk.Proto.create(4), fk.Mark(), fk.ShortBinUnicode("smtplib"), fk.ShortBinUnicode("SMTP"),
                     fk.StackGlobal(), fk.ShortBinUnicode("127.0.0.1"), fk.Obj(), fk.Pop(), fk.NoneOpcode(), fk.Stop()),
                "PK-I01"),
    # GHSA-5hwf-rc88-82xm: stdlib helpers that run commands
    "uuid-_get_command_stdout": (_ops(fk.Proto.create(4), *_call("uuid", "_get_command_stdout", "true"), fk.Stop()),
                                 "PK-I01"),
    "_aix_support-_read_cmd_output": (_ops(fk.Proto.create(4), *_call("_aix_support", "_read_cmd_output", "true"),
                                           fk.Stop()), "PK-I01"),
    "_osx_support-_find_build_tool": (_ops(fk.Proto.create(4), *_call("_osx_support", "_find_build_tool", "x; true #"),
                                           fk.Stop()), "PK-I01"),
    # GHSA-5j3x-jp52-966f: a dotted attribute through an innocent module
    "pathlib-os.system": (_ops(fk.Proto.create(4), *_call("pathlib", "os.system", "true"), fk.Stop()), "PK-I01"),
    # GHSA-6ggj-6f2q-f7mx: subinterpreters run source
    "_interpreters-create": (_ops(fk.Proto.create(4), *_call("_interpreters", "create"), fk.Stop()), "PK-I01"),
    "_xxsubinterpreters-create": (_ops(fk.Proto.create(4), *_call("_xxsubinterpreters", "create"), fk.Stop()),
                                  "PK-I01"),
    # GHSA-cffv-grgg-g429: an import outside the ML allowlist
    "ast-parse": (_ops(fk.Proto.create(4), *_call("ast", "parse", "1"), fk.Stop()), "PK-I02"),
    # test_private_stdlib_allowlist: a dotted name under an allowlisted module is not allowlisted
    "__future__-dotted": (_ops(fk.Proto.create(4), *_call("__future__", "_ssl.RAND_bytes"), fk.Stop()), "PK-I02"),
    "_codecs-dotted": (_ops(fk.Proto.create(4), *_call("_codecs", "encode.__globals__"), fk.Stop()), "PK-I01"),
}


@pytest.mark.parametrize("name", ADVISORIES)
def test_fickling_advisory_bypass_fails(scan_bytes, name):
    data, rule = ADVISORIES[name]
    _fails(scan_bytes(data, "model.pkl"), rule)


@pytest.mark.parametrize("module,cls,port", [("smtplib", "SMTP", 25), ("imaplib", "IMAP4", 143), ("ftplib", "FTP", 21),
                                             ("poplib", "POP3", 110), ("telnetlib", "Telnet", 23),
                                             ("nntplib", "NNTP", 119)])
def test_network_client_ssrf_fails(scan_bytes, module, cls, port):
    """test_network_protocol_ssrf: a client class built with a host and port, then BUILD."""
    data = _ops(fk.Proto.create(4), fk.Global.create(module, cls), fk.ShortBinUnicode("127.0.0.1"), fk.BinInt2(port),
                fk.TupleTwo(), fk.Reduce(), fk.EmptyDict(), fk.Build(), fk.Stop())
    _fails(scan_bytes(data, "model.pkl"), "PK-I01")


def test_fickling_safe_builtins_are_plain_values_or_unknown(scan_bytes):
    """fickling rates ``dict()`` and ``len([])`` likely safe: dict is a plain container for us too;
    ``len`` is in no allowlist (no pickler writes it), so it fails as unknown, never clean."""
    _clean(scan_bytes(_ops(fk.Global.create("builtins", "dict"), fk.EmptyTuple(), fk.Reduce(), fk.Stop())))
    _fails(scan_bytes(_ops(fk.Global.create("builtins", "len"), fk.EmptyList(), fk.TupleOne(), fk.Reduce(),
                           fk.Stop())), "PK-I02")


# -- fickling's unsafe lists: every module and name fails, as known dangerous ------------------------
NOT_MODULES = {"__builtins__", "eval", "exec", "compile", "builtins", "__builtin__"}  # builtins: by name, below
LIKELY_HARMLESS = {"difflib"}  # fickling lists it with no reason we could find: unknown (fails), not "dangerous"


@pytest.mark.parametrize("module", sorted(fk.UNSAFE_IMPORTS | set(UnsafeImportsML.UNSAFE_MODULES)))
def test_every_module_fickling_calls_unsafe_fails(scan_bytes, module):
    data = _ops(fk.Proto.create(4), *_call(module, "anything"), fk.Stop())
    report = scan_bytes(data, "model.pkl")
    if module in NOT_MODULES | LIKELY_HARMLESS:
        _fails(report)
    else:
        _fails(report, "PK-I01")


@pytest.mark.parametrize("module,name", sorted((m, n) for m, names in UnsafeImportsML.UNSAFE_IMPORTS.items()
                                               for n in names))
def test_every_name_fickling_calls_unsafe_for_ml_fails(scan_bytes, module, name):
    _fails(scan_bytes(_ops(fk.Proto.create(4), *_call(module, name), fk.Stop()), "model.pkl"), "PK-I01")


@pytest.mark.parametrize("name", ["eval", "exec", "compile", "__import__", "getattr", "setattr", "open", "globals",
                                  "vars", "breakpoint", "input", "map", "filter", "iter", "type", "super", "memoryview"])
def test_dangerous_builtins_fail_under_every_builtins_spelling(scan_bytes, name):
    for module in ("builtins", "__builtin__"):
        _fails(scan_bytes(_ops(fk.Proto.create(4), *_call(module, name, "1"), fk.Stop())), "PK-I01")


@pytest.mark.parametrize("module", sorted({"fickling", "picklescan", "modelscan", "model_unpickler", "saferpickle",
                                           "modelaudit", "tensorsafe"}))
def test_scanner_deactivation_fails_as_dangerous(scan_bytes, module):
    """test_scanner_deactivation_analysis: a pickle that imports a scanner (to switch it off)."""
    for where, name in ((f"{module}.hook", "remove_hook"), (module, "anything")):
        _fails(scan_bytes(_ops(fk.Proto.create(4), *_call(where, name), fk.Stop()), "model.pkl"), "PK-I01")


def test_dangerous_module_cannot_be_allowed_by_a_policy_file():
    """The dangerous tier also guards policy files: ``_operator`` is ``operator`` by another name."""
    for entry in ("_operator:methodcaller", "pydoc:locate", "uuid:_get_command_stdout", "fickling.hook:remove_hook"):
        with pytest.raises(PolicyFileError):
            DEFAULT_POLICY.extended(allow=[entry])


# -- gadgets: operator, functools, getattr, __reduce__ chains, nested pickles ------------------------
class _Reduces:
    """An object whose ``__reduce__`` returns (callable, args): ``pickle.dumps`` only writes it."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _gadgets() -> dict[str, bytes]:
    import functools
    import operator
    import os

    dyn = "Jw~[v5QpA(BY%aKnyT&*x0r9-OpfF}HN4$GU2VhS@XEq!Zt>6_R7#]1b{z3M^D?)d8eImgckPLiuoClW<js"
    # fickling issue 125 (test_stack_global_dynamic_import): "os" and "system" computed by
    # operator.itemgetter and str.join, then imported by STACK_GLOBAL
    ctf = _ops(fk.Proto.create(4), fk.Global.create("operator", "itemgetter"), fk.BinPut(0), fk.Pop(),
               fk.Global.create("builtins", "getattr"), fk.Mark(), fk.ShortBinUnicode(""), fk.ShortBinUnicode("join"),
               fk.Tuple(), fk.Reduce(), fk.BinPut(1), fk.BinGet(0), fk.Mark(), fk.BinInt1(77), fk.BinInt1(83),
               fk.Tuple(), fk.Reduce(), fk.Mark(), fk.BinUnicode(dyn), fk.Tuple(), fk.Reduce(), fk.BinPut(2),
               fk.BinGet(1), fk.Mark(), fk.BinGet(2), fk.Tuple(), fk.Reduce(), fk.BinPut(3), fk.BinGet(3),
               fk.ShortBinUnicode("system"), fk.StackGlobal(), fk.Stop())
    return {
        "reduce-os-system": pickle.dumps(_Reduces(os.system, ("true",)), protocol=2),
        "reduce-eval-p0": pickle.dumps(_Reduces(eval, ("1",)), protocol=0),
        "reduce-chain-getattr": pickle.dumps(_Reduces(getattr, (_Reduces(__import__, ("os",)), "system")), protocol=4),
        "operator-attrgetter": pickle.dumps(_Reduces(operator.attrgetter("system"), ()), protocol=4),
        "operator-methodcaller": pickle.dumps(_Reduces(operator.methodcaller("system", "true"), ()), protocol=4),
        "functools-partial": pickle.dumps(functools.partial(os.system, "true"), protocol=4),
        "functools-reduce": pickle.dumps(_Reduces(functools.reduce, (os.system, ["true"])), protocol=2),
        "state-dict-with-reduce": pickle.dumps({"w": torch.zeros(1).tolist(), "x": _Reduces(os.system, ("true",))},
                                               protocol=2),
        "stack-global-computed": ctf,
    }


GADGETS = _gadgets()


@pytest.mark.parametrize("name", GADGETS)
def test_gadget_fails(scan_bytes, name):
    _fails(scan_bytes(GADGETS[name], "model.pkl"))


@pytest.mark.parametrize("loader", ["pickle", "_pickle"])
@pytest.mark.parametrize("inner", ["benign", "hostile"])
def test_nested_pickle_loads_fails_and_its_payload_is_scanned(scan_bytes, loader, inner):
    """``pickle.loads(b"...")`` runs a second unpickler with real imports: the import fails as
    dangerous whatever the inner pickle holds, and the inner pickle is scanned too (PK-C04)."""
    nested = pickle.dumps({"a": 1}, protocol=2) if inner == "benign" else SYSTEM
    data = _ops(fk.Proto.create(2), fk.Global.create(loader, "loads"), fk.ShortBinBytes(nested), fk.TupleOne(),
                fk.Reduce(), fk.Stop())
    report = scan_bytes(data, "model.pkl")
    _fails(report, "PK-I01", "PK-C04")
    if inner == "hostile":
        assert any(f.rule_id == "PK-I01" and "os" in f.message for f in report.findings), [str(f) for f in
                                                                                            report.findings]


def test_nested_pickle_three_levels_deep_is_scanned_to_the_bottom(scan_bytes):
    """fickling's test_unpickler: pickle.loads of a pickle that calls torch.storage._load_from_bytes
    on a pickle that calls os.system (torch.load unpickles the first pickle before checking its magic)."""
    import os

    inner = pickle.dumps(_Reduces(os.system, ("true",)))
    middle = pickle.dumps(_Reduces(torch.storage._load_from_bytes, (inner,)))
    report = scan_bytes(pickle.dumps(_Reduces(pickle.loads, (middle,))), "model.pkl")
    _fails(report, "PK-I01", "PK-C04")
    imports = [f.message for f in report.findings if f.rule_id == "PK-I01"]
    assert len(imports) == 3 and "system" in imports[-1], imports


def test_nested_pickle_of_an_allowed_value_still_fails(scan_bytes):
    """fickling allows ``pickle.loads`` when asked (also_allow); we never do: the nested unpickler
    has no allowlist of its own."""
    import numpy as np

    _fails(scan_bytes(pickle.dumps(_Reduces(pickle.loads, (pickle.dumps(np.dtype(">i4")),))), "model.pkl"), "PK-I01")


@pytest.mark.parametrize("ext", [b"\x82\x01", b"\x83\x01\x02", b"\x84\x01\x02\x03\x04"], ids=["ext1", "ext2", "ext4"])
def test_extension_registry_call_fails(scan_bytes, ext):
    """test_pickle's EXT1/EXT2/EXT4: a callable taken from copyreg's extension registry."""
    _fails(scan_bytes(op.proto(2) + ext + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP), "PK-I04")


@pytest.mark.parametrize("protocol", [4, 5])
def test_fickling_rewrites_frames_consistently(scan_bytes, protocol):
    """fickling re-frames what it rewrites (test_injection_recomputes_frame_lengths): a round trip is
    byte-identical and clean; an injection into a framed pickle fails on its import, not on frames."""
    obj = {"a": list(range(100)), "b": b"x" * 70000, "c": "t" * 10}
    original = pickle.dumps(obj, protocol=protocol)
    assert Pickled.load(original).dumps() == original
    _clean(scan_bytes(Pickled.load(original).dumps()))
    injected = Pickled.load(original)
    injected.insert_python_exec(PAYLOAD, run_first=False)
    report = scan_bytes(injected.dumps())
    _fails(report, "PK-I01")
    assert "PK-S06" not in rule_ids(report)


def test_torch_storage_load_from_bytes_fails(scan_bytes):
    """``pickle.dumps`` of a tensor names ``torch.storage._load_from_bytes`` (a nested torch.load)."""
    _fails(scan_bytes(pickle.dumps(torch.zeros(3), protocol=2), "tensor.pkl"), "PK-I01", "PK-C04")


# -- FRAME: python/cpython#154848 ---------------------------------------------------------------------
def _framed(body: bytes, declared: int) -> bytes:
    return op.proto(5) + b"\x95" + struct.pack("<Q", declared) + body + op.STOP


HIDDEN = b"c" + b"os\nsystem\n" + b"Vtrue\n" + op.TUPLE1 + op.REDUCE
FRAME_DIVERGENCES = {
    # BINBYTES declares 0x107 bytes inside a frame of 2: the C unpickler reading a file runs the
    # GLOBAL/REDUCE buried in what a linear reader takes for a byte string
    "undersized-frame": (op.proto(5) + op.NONE + b"V" + b"a" * (8192 * 16 - 17) + b"\n" + b"0" + op.MARK + b"\x95"
                         + struct.pack("<Q", 2) + b"B" + b"\x07\x01\x00\x00" + b"\x00\x00"
                         + (HIDDEN + op.MARK).ljust(256 + 5, op.NONE) + b"1" + op.STOP),
    "short_binunicode-straddles": _framed(b"\x8c\x14" + b"A" * 20, 3),
    "global-module-straddles": _framed(b"cmacos\nsystem\n", 4),
    "global-name-straddles": _framed(b"cos\nsystem\n", 7),
    "unicode-straddles": _framed(b"Vhello world\n", 5),
    "binint-straddles": _framed(b"J" + struct.pack("<i", 7), 2),
    "frame-inside-frame": op.proto(5) + b"\x95" + struct.pack("<Q", 30) + op.NONE + b"\x95" + struct.pack("<Q", 2)
    + op.NONE + op.STOP,
}


@pytest.mark.parametrize("name", FRAME_DIVERGENCES)
def test_frame_differential_fails(scan_bytes, name):
    _fails(scan_bytes(FRAME_DIVERGENCES[name], "model.pkl"), "PK-S06")


def test_frame_ending_between_header_and_payload_is_read_alike(scan_bytes):
    """fickling flags this on purpose, "stricter than CPython": the payload read finds the frame
    empty and reads on from the file, so pickle.py, ``_pickle`` from bytes and from a file take
    the same 20 bytes. No differential: no PK-S06 (a deliberate difference from fickling)."""
    data = _framed(b"B" + struct.pack("<I", 20) + b"A" * 20, 5)
    assert "PK-S06" not in rule_ids(scan_bytes(data, "model.pkl"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("obj", [[1, 2, 3, 4], b"x" * 100000, [1, b"y" * 100000, 2], list(range(200000)),
                                 {"a": [1, 2, {"b": (3, 4)}], "c": [5, 6]}],
                         ids=["small-list", "large-bytes", "interleaved", "full-frames", "nested"])
def test_well_formed_frames_stay_clean(scan_bytes, obj, protocol):
    _clean(scan_bytes(pickle.dumps(obj, protocol=protocol), "data.pkl"))


# -- expansion and cycles (test_expansion_attack_analysis, test_crashes) ------------------------------
def test_billion_laughs_of_shared_references_is_clean_and_bounded(scan_bytes):
    """globalLaughs.pt (DUP) and billionLaughsAlt.pkl (memo) at full size: every unpickler builds
    them as shared references in linear memory; the scan must neither expand nor hang."""
    dup = op.proto(4) + op.MARK * 9 + op.unicode_("lol") + (b"2" * 9 + b"l") * 9 + op.STOP
    memo = op.proto(4) + op.MARK * 10 + op.unicode_("lol") + b"".join(
        op.binput(i) + op.binget(i) * 9 + b"l" for i in range(10)) + op.STOP
    _clean(scan_bytes(dup, "laughs.pkl"))
    _clean(scan_bytes(memo, "laughs.pkl"))


@pytest.mark.slow  # the converter walks its 1,000,000-entry bound before it refuses
def test_torch_save_of_a_shared_reference_bomb_reads_bounded(tmp_path):
    t = torch.zeros(2)
    nested: object = [t]
    for _ in range(12):
        nested = [nested] * 9
    path = tmp_path / "bomb.pt"
    torch.save({"w": t, "bomb": nested}, path)
    _clean(tensorsafe.scan(path))
    with pytest.raises(TensorsafeError):  # 9**12 entries: refused, never expanded
        tensorsafe.convert(path, tmp_path / "bomb.safetensors")


def test_cyclic_pickles(scan_bytes):
    """A list holding itself loads; a dict keyed by itself or a set holding itself raises TypeError."""
    _clean(scan_bytes(op.proto(2) + b"]" + op.binput(0) + op.binget(0) + b"a" + op.STOP))
    _clean(scan_bytes(op.proto(2) + b"}" + op.binput(0) + op.unicode_("self") + op.binget(0) + b"s" + op.STOP))
    _not_clean(scan_bytes(op.proto(2) + b"}" + op.binput(0) + op.binget(0) + op.unicode_("v") + b"s" + op.STOP))
    _not_clean(scan_bytes(op.proto(4) + b"\x8f" + op.binput(0) + op.MARK + op.binget(0) + b"\x90" + op.STOP))
    _not_clean(scan_bytes(op.proto(4) + b"t" + op.STOP))  # fickling issue 188: TUPLE without a MARK


def test_pop_mark_numpy_builtins_eval_fails(scan_bytes):
    """test_crashes.test_pop_mark (mindspore issue 183): eval fetched through numpy's __builtins__."""
    data = (b"\x80\x04\x95\x82\x00\x00\x00\x00\x00\x00\x00(\x8c\x05numpy\x8c\x06poly1d\x93\x94\x8c\x05numpy\x8c\x04"
            b"size\x93\x94\x8c\x05numpy\x8c\x0c__builtins__\x93\x94h\x00N\x85R\x94h\x03\x94h\x02\x94h\x04(\x8c\x05"
            b"shapeh\x05dbh\x01h\x04\x8c\x04eval\x86R\x8c\x1d__import__('os').system('id')\x85R1N.")
    _fails(scan_bytes(data, "model.pkl"), "PK-I01")


# -- PyTorch files: benign, injected, appended ---------------------------------------------------------
@pytest.fixture
def torch_files(tmp_path, monkeypatch):
    """A state dict saved as torch writes it: zip (v1.3) and legacy (v0.1.10) formats."""
    monkeypatch.chdir(tmp_path)  # fickling's polyglot builder writes temporary copies to the working folder
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).state_dict()
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    return tmp_path


def _data_pkl(path: Path) -> tuple[str, bytes]:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return name, z.read(name)


def _rezip(src: Path, dst: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for item in z.infolist():
            out.writestr(item.filename, (replace or {}).get(item.filename, z.read(item)))
        for name, data in (add or {}).items():
            out.writestr(name, data)
    return dst


def test_torch_save_of_a_state_dict_is_clean(torch_files):
    """fickling's benign case: the formats it identifies as PyTorch v1.3 and v0.1.10."""
    assert polyglot.identify_pytorch_file_format(torch_files / "zip.pt") == ["PyTorch v1.3"]
    assert polyglot.identify_pytorch_file_format(torch_files / "legacy.pt") == ["PyTorch v0.1.10"]
    _clean(tensorsafe.scan(torch_files / "zip.pt"))
    _clean(tensorsafe.scan(torch_files / "legacy.pt"))


@pytest.mark.parametrize("injection", ["insertion", "combination"])
def test_pytorch_model_wrapper_injection_fails(torch_files, injection):
    """fickling's PyTorchModelWrapper: exec inserted into data.pkl, or the model wrapped in an object
    whose ``__reduce__`` is eval."""
    out = torch_files / f"{injection}.pt"
    PyTorchModelWrapper(torch_files / "zip.pt").inject_payload(PAYLOAD, out, injection=injection)
    _fails(tensorsafe.scan(out), "PK-I01")


@pytest.mark.parametrize("run_first", [True, False])
@pytest.mark.parametrize("replace_result", [False, True])
def test_insert_python_exec_into_data_pkl_fails(torch_files, run_first, replace_result):
    name, data = _data_pkl(torch_files / "zip.pt")
    injected = Pickled.load(data)
    injected.insert_python_exec(PAYLOAD, run_first=run_first, use_output_as_unpickle_result=replace_result)
    out = _rezip(torch_files / "zip.pt", torch_files / "exec.pt", replace={name: injected.dumps()})
    _fails(tensorsafe.scan(out), "PK-I01")


@pytest.mark.parametrize("compile_code", [False, True])
def test_function_call_on_the_unpickled_model_fails(torch_files, compile_code):
    """``insert_function_call_on_unpickled_object``: exec a def (as source or marshalled code), then call it."""
    name, data = _data_pkl(torch_files / "zip.pt")
    injected = Pickled.load(data)
    injected.insert_function_call_on_unpickled_object("def hook(obj):\n    return obj", compile_code=compile_code)
    out = _rezip(torch_files / "zip.pt", torch_files / "call.pt", replace={name: injected.dumps()})
    _fails(tensorsafe.scan(out), "PK-I01")


# fickling's pickle_scanning_benchmark/inject.py payloads, each split into module and attribute at every dot
BENCHMARK_PAYLOADS = {
    "os.system": ("true",), "subprocess.run": (["true"],), "builtins.exec": ("1",),
    "subprocess.check_output": (["true"],), "numpy.testing._private.utils.runstring": ("1", {}),
    "shutil.os.system": ("true",), "torch.hub.load_state_dict_from_url": ("http://127.0.0.1/x.pth",),
    "torch.hub.load": ("owner/repo", "entry"), "torch.load": ("./x",),
    "urllib.request.urlretrieve": ("http://127.0.0.1", "./f"), "shutil.os.execve": ("./f", [], {}),
}
SPLITS = [(f, i, first) for f in BENCHMARK_PAYLOADS for i in range(1, f.count(".") + 1) for first in (True, False)]


@pytest.mark.parametrize("function,split,run_first", SPLITS)
def test_benchmark_injection_fails(torch_files, function, split, run_first):
    parts = function.split(".")
    name, data = _data_pkl(torch_files / "zip.pt")
    injected = Pickled.load(data)
    injected.insert_python(*BENCHMARK_PAYLOADS[function], module=".".join(parts[:split]),
                           attr=".".join(parts[split:]), run_first=run_first)
    out = _rezip(torch_files / "zip.pt", torch_files / "bench.pt", replace={name: injected.dumps()})
    _fails(tensorsafe.scan(out), "PK-I01")


def _legacy_pickle_lengths(raw: bytes) -> int:
    return sum(len(p.dumps()) for p in StackedPickle.load(io.BytesIO(raw)))


@pytest.mark.parametrize("index", range(5))
def test_legacy_file_injected_into_each_stacked_pickle_fails(torch_files, index):
    """The legacy format is five pickles (magic, protocol, sys info, data, storage keys) then raw
    storages: exec inserted into any one of them fails."""
    raw = (torch_files / "legacy.pt").read_bytes()
    stacked = StackedPickle.load(io.BytesIO(raw))
    assert len(stacked) == 5
    stacked[index].insert_python_exec(PAYLOAD)
    out = torch_files / "legacy-injected.pt"
    out.write_bytes(b"".join(p.dumps() for p in stacked) + raw[_legacy_pickle_lengths(raw):])
    _fails(tensorsafe.scan(out), "PK-I01")


@pytest.mark.parametrize("index", range(6))
def test_extra_pickle_stacked_into_a_legacy_file(torch_files, index):
    """A sixth pickle at each boundary: before the storage keys' pickle torch.load unpickles it (fails,
    PK-I01); after it, torch reads its bytes as the first storage's header, never as a pickle, and
    the file no longer reads as a legacy checkpoint (not clean either)."""
    raw = (torch_files / "legacy.pt").read_bytes()
    parts = [p.dumps() for p in StackedPickle.load(io.BytesIO(raw))]
    end = sum(map(len, parts))
    out = torch_files / "legacy-stacked.pt"
    out.write_bytes(b"".join(parts[:index]) + SYSTEM + b"".join(parts[index:]) + raw[end:])
    report = tensorsafe.scan(out)
    if index < 5:
        _fails(report, "PK-I01")
    else:
        _not_clean(report)


def test_pickle_appended_to_a_legacy_file_fails(torch_files):
    out = torch_files / "legacy-appended.pt"
    out.write_bytes((torch_files / "legacy.pt").read_bytes() + SYSTEM)
    _fails(tensorsafe.scan(out), "PK-I01")


def test_pickle_appended_inside_data_pkl_fails(torch_files):
    name, data = _data_pkl(torch_files / "zip.pt")
    out = _rezip(torch_files / "zip.pt", torch_files / "data-appended.pt", replace={name: data + SYSTEM})
    _fails(tensorsafe.scan(out), "PK-I01")


@pytest.mark.parametrize("member", ["{prefix}/extra.pkl", "constants.pkl", "{prefix}/constants.pkl", "x.pk",
                                    "{prefix}/data/99", "model.bin"])
def test_extra_pickle_member_fails(torch_files, member):
    """pickle_scanning_benchmark injects into the first .pkl/.pickle/.pk member; any member a loader
    might unpickle is scanned, named so or not (a protocol-0 pickle has no magic byte)."""
    name, _ = _data_pkl(torch_files / "zip.pt")
    proto0 = b"cos\nsystem\n(S'true'\ntR."
    out = _rezip(torch_files / "zip.pt", torch_files / "extra.pt",
                 add={member.format(prefix=name.split("/")[0]): proto0})
    _fails(tensorsafe.scan(out), "PK-I01")


# -- polyglots (test_polyglot.py) ---------------------------------------------------------------------
def _torchscript(tmp_path: Path, hostile_constants: bool = False) -> Path:
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    path = tmp_path / "ts.pt"
    module.save(str(path))
    if hostile_constants:
        with zipfile.ZipFile(path) as z:
            const = next(n for n in z.namelist() if n.endswith("constants.pkl"))
        path = _rezip(path, tmp_path / "ts-hostile.pt", replace={const: SYSTEM})
    return path


@pytest.mark.parametrize("hostile", [False, True], ids=["benign", "hostile-constants"])
def test_pytorch_v1_3_and_torchscript_polyglot(torch_files, hostile):
    """create_standard_torchscript_polyglot: a torch.save zip with TorchScript's constants.pkl and
    version added at the root. Both readings' pickles are scanned: clean when both are."""
    ts = _torchscript(torch_files, hostile)
    assert polyglot.create_polyglot(torch_files / "zip.pt", ts, torch_files / "poly.pt", print_results=False)
    assert {"PyTorch v1.3", "TorchScript v1.4"} <= set(polyglot.identify_pytorch_file_format(torch_files / "poly.pt"))
    report = tensorsafe.scan(torch_files / "poly.pt")
    if hostile:
        _fails(report, "PK-I01")
    else:
        _clean(report)


def test_torchscript_archive_is_not_clean(torch_files):
    """torch.jit.load compiles and runs the archive's code: never clean."""
    report = tensorsafe.scan(_torchscript(torch_files))
    assert "ZIP-09" in rule_ids(report)
    _not_clean(report)


def _mar(path: Path, model: Path) -> Path:
    """A TorchServe model archive as fickling identifies one: a manifest, a model and handler code."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", '{"model": {"modelName": "m", "serializedFile": "model.pt", '
                                            '"handler": "handler.py"}}')
        z.write(model, "model.pt")
        z.writestr("handler.py", "def handle(data, context):\n    return data\n")
    return path


def test_mar_and_legacy_pickle_polyglot_fails(torch_files):
    """create_mar_legacy_pickle_polyglot: the archive appended to a legacy torch file; torch.load reads
    the pickles, zipfile the archive."""
    mar = _mar(torch_files / "m.mar", torch_files / "zip.pt")
    assert polyglot.create_polyglot(mar, torch_files / "legacy.pt", torch_files / "poly.mar.pt", print_results=False)
    formats = polyglot.identify_pytorch_file_format(torch_files / "poly.mar.pt")
    assert {"PyTorch v0.1.10", "PyTorch model archive format"} <= set(formats)
    _fails(tensorsafe.scan(torch_files / "poly.mar.pt"), "ZIP-05")


def _legacy_tar(path: Path, pickle_member: bytes) -> Path:
    """torch's v0.1.1 tar layout (fickling's test builds it with a dummy pickle)."""
    with tarfile.open(path, "w:") as tar:
        for name, data in (("pickle", pickle_member), ("storages", b"\x80\x02K\x00."), ("tensors", b"\x80\x02K\x00.")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", [b"dummy content", SYSTEM, pickle.dumps({"a": 1}, protocol=2)],
                         ids=["dummy", "hostile", "plain"])
def test_legacy_tar_is_never_clean(torch_files, member):
    """torch.load refuses the v0.1.1 tar format under weights_only; its pickles are scanned."""
    path = _legacy_tar(torch_files / "legacy.tar", member)
    assert polyglot.identify_pytorch_file_format(path) == ["PyTorch v0.1.1"]
    report = tensorsafe.scan(path)
    _not_clean(report)
    if member is SYSTEM:
        assert "PK-I01" in rule_ids(report)


def test_mar_and_legacy_tar_polyglot_fails(torch_files):
    mar = _mar(torch_files / "m.mar", torch_files / "zip.pt")
    tar = _legacy_tar(torch_files / "legacy.tar", pickle.dumps({"a": 1}, protocol=2))
    assert polyglot.create_polyglot(mar, tar, torch_files / "poly.mar.tar", print_results=False)
    _fails(tensorsafe.scan(torch_files / "poly.mar.tar"), "ZIP-05")


@pytest.mark.parametrize("front", ["hostile-pickle", "plain-pickle", "legacy-torch"])
def test_pickle_then_zip_polyglot_fails(torch_files, front):
    """create_zip_pickle_polyglot: a zip appended to a pickle; torch.load reads the pickle (no zip
    magic at offset 0), zipfile the archive."""
    first = {"hostile-pickle": SYSTEM, "plain-pickle": pickle.dumps({"a": 1}, protocol=2),
             "legacy-torch": (torch_files / "legacy.pt").read_bytes()}[front]
    path = torch_files / "poly.pt"
    path.write_bytes(first)
    polyglot.create_zip_pickle_polyglot(torch_files / "zip.pt", path)
    report = tensorsafe.scan(path)
    _fails(report, "ZIP-05")
    if front == "hostile-pickle":
        assert "PK-I01" in rule_ids(report)


def test_zip_with_prepended_text_is_not_clean(torch_files):
    """test_polyglot's random zip with a prepended string."""
    with zipfile.ZipFile(torch_files / "r.zip", "w") as z:
        z.writestr("r.tmp", bytes(range(256)) * 4)
    path = torch_files / "r.zip"
    path.write_bytes(b"Xy7Qp0aZ3mN8vB2cD5eF" + path.read_bytes())
    _fails(tensorsafe.scan(path), "ZIP-05")


def test_numpy_files(torch_files):
    """test_polyglot's numpy cases: a plain array is clean; an object array is a pickle, judged."""
    import numpy as np

    np.save(torch_files / "plain.npy", [1, 2, 3])
    np.save(torch_files / "object.npy", {"test": [1, 2, 3]})
    _clean(tensorsafe.scan(torch_files / "plain.npy"))
    assert "NPY-01" in rule_ids(tensorsafe.scan(torch_files / "object.npy"))
    raw = (torch_files / "object.npy").read_bytes()
    header_end = 10 + int.from_bytes(raw[8:10], "little")
    (torch_files / "hostile.npy").write_bytes(raw[:header_end] + SYSTEM)
    _fails(tensorsafe.scan(torch_files / "hostile.npy"), "PK-I01")
    with zipfile.ZipFile(torch_files / "hostile.anything", "w") as z:
        z.write(torch_files / "hostile.npy", "pickle.npy")
    with tarfile.open(torch_files / "hostile-tar.anything", "w") as tar:
        tar.add(torch_files / "hostile.npy", arcname="pickle.npy")
    _fails(tensorsafe.scan(torch_files / "hostile.anything"), "PK-I01")
    _fails(tensorsafe.scan(torch_files / "hostile-tar.anything"), "PK-I01")


# -- TorchServe model archives: fickling's "PyTorch model archive format" ------------------------------
def test_model_archive_with_a_builtin_handler_is_clean(torch_files):
    """A .mar whose handler is one of TorchServe's own (named in the manifest) holds no code."""
    with zipfile.ZipFile(torch_files / "builtin.mar", "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", '{"model": {"modelName": "m", "serializedFile": "model.pt", '
                                            '"handler": "image_classifier"}}')
        z.write(torch_files / "zip.pt", "model.pt")
    _clean(tensorsafe.scan(torch_files / "builtin.mar"))


@pytest.mark.parametrize("member", ["handler.py", "model.py", "utils/extra.py", "handler.pyc", "ext.cpython-311.so"])
def test_model_archive_code_fails(torch_files, member):
    """TorchServe imports the handler (and the model file, and what they import) when it serves the
    archive: code that cannot be proven safe by reading it (ZIP-10), before: clean."""
    mar = _mar(torch_files / "m.mar", torch_files / "zip.pt")
    if member != "handler.py":
        mar = _rezip(mar, torch_files / "m2.mar", add={member: b"import os\nos.system('true')\n"})
    assert polyglot.identify_pytorch_file_format(torch_files / "m.mar") == ["PyTorch model archive format"]
    report = tensorsafe.scan(mar)
    _fails(report, "ZIP-10")
    assert any(f.rule_id == "ZIP-10" and member in f.message for f in report.findings)


def test_python_file_in_a_plain_zip_is_not_a_model_archive(torch_files):
    with zipfile.ZipFile(torch_files / "src.zip", "w") as z:
        z.writestr("handler.py", "print('hi')\n")
        z.write(torch_files / "zip.pt", "model.pt")
    assert "ZIP-10" not in rule_ids(tensorsafe.scan(torch_files / "src.zip"))


def test_model_archive_as_tgz_code_fails(torch_files):
    """``torch-model-archiver --archive-format tgz``: the same layout under the model's folder, gzipped."""
    with tarfile.open(torch_files / "m.tar.gz", "w:gz") as tar:
        for name, data in (("m/MAR-INF/MANIFEST.json", b'{"model": {"handler": "handler.py"}}'),
                           ("m/model.pt", (torch_files / "zip.pt").read_bytes()),
                           ("m/handler.py", b"import os\nos.system('true')\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _fails(tensorsafe.scan(torch_files / "m.tar.gz"), "ZIP-10")


# -- test_crashes.test_stable_diffusion (fickling issue 22): textual-inversion embeddings ---------------
def test_textual_inversion_embedding_as_a_plain_dict_is_clean(tmp_path):
    """The embedding format Stable Diffusion web UIs write: tensors in plain dicts."""
    path = tmp_path / "embedding.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 8)}, "name": "style",
                "step": 3000, "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned"}, path)
    _clean(tensorsafe.scan(path))


def test_textual_inversion_embedding_with_a_parameter_dict_fails_as_unknown(tmp_path):
    """The issue-22 file keeps its embeddings in an ``nn.ParameterDict`` (a module rebuilt by BUILD):
    torch.load(weights_only=True) refuses it too; not in the allowlist, but nothing dangerous."""
    path = tmp_path / "embedding.pt"
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(2, 8))})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, path)
    report = tensorsafe.scan(path)
    _fails(report, "PK-I02")
    assert "PK-I01" not in rule_ids(report)


def test_pytorch_model_wrapper_injection_into_torchscript_fails(torch_files):
    """fickling's wrapper also injects into a TorchScript archive's data.pkl ("experimental")."""
    out = torch_files / "ts-injected.pt"
    PyTorchModelWrapper(_torchscript(torch_files)).inject_payload(PAYLOAD, out, injection="insertion")
    _fails(tensorsafe.scan(out), "PK-I01")


@pytest.mark.parametrize("name", ["a-file.pickle", "a-file.npy", "a-file.npz"])
def test_raw_pickle_under_a_numpy_name_fails(scan_bytes, name):
    """fickling's numpy_poc (CVE-2019-6446): np.load(allow_pickle=True) unpickles a file with no npy magic."""
    _fails(scan_bytes(SYSTEM, name), "PK-I01")


# -- the restricted reader under fickling's resource cases (expansion, oversized values) ----------------
def _zip_checkpoint(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    return path


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


@pytest.mark.parametrize("call", [
    op.global_("__builtin__", "bytearray") + _long(3 * 10**9) + op.TUPLE1,  # 3 GB of zeros (before: allocated)
    op.global_("__builtin__", "bytearray") + _long(10**12) + op.TUPLE1,  # before: MemoryError traceback
    op.global_("__builtin__", "bytes") + _long(2**70) + op.TUPLE1,  # before: OverflowError traceback
    op.global_("__builtin__", "bytearray") + op.unicode_("x") + op.unicode_("rot13") + op.TUPLE2,  # LookupError
    op.global_("__builtin__", "complex") + _long(10**400) + op.TUPLE1,  # before: OverflowError traceback
], ids=["bytearray-3GB", "bytearray-1TB", "bytes-2**70", "bytearray-codec", "complex-huge"])
def test_reader_refuses_allocating_or_overflowing_constructors(tmp_path, call):
    """A few bytes of pickle that make ``bytearray(n)`` allocate n bytes: reading the checkpoint is
    a one-line error, never a traceback or an allocation. The scan refuses the allocating ones
    first (PK-A01, tests/pickles/test_allocation_bombs.py); the reader alone refuses them too."""
    from tensorsafe.checkpoint import read_checkpoint

    path = _zip_checkpoint(tmp_path / "m.pt", op.proto(2) + b"}" + op.unicode_("x") + call + op.REDUCE + b"s"
                           + op.STOP)
    with pytest.raises((ParseError, tensorsafe.UnsafeFileError)):
        tensorsafe.load_state_dict(path)
    with pytest.raises(ParseError):
        read_checkpoint(path, scan_first=False)


def test_reader_still_rebuilds_bytearrays_as_picklers_write_them(tmp_path):
    from tensorsafe.checkpoint import read_checkpoint

    for protocol in (2, 4):
        path = tmp_path / f"b{protocol}.pt"
        torch.save({"w": torch.zeros(1), "b": bytearray(b"ab\xff"), "e": bytearray()}, path, pickle_protocol=protocol)
        _clean(tensorsafe.scan(path))
        root = read_checkpoint(path).root
        assert root["b"] == bytearray(b"ab\xff") and root["e"] == bytearray()


# -- --explain (fickling's decompiler) on fickling's expansion cases ------------------------------------
@pytest.mark.parametrize("bomb", ["memo", "dup"])
def test_explain_of_a_failing_billion_laughs_pickle_is_bounded(scan_bytes, bomb):
    """os.system(<shared-reference bomb>): the scan fails at once, and before this fix ``--explain``
    ran for minutes writing 10**10 nodes of fickling's tree (ast.unparse expands every reference)."""
    if bomb == "memo":
        arg = op.MARK * 10 + op.unicode_("lol") + b"".join(op.binput(i) + op.binget(i) * 9 + b"l" for i in range(10))
    else:
        arg = op.MARK * 9 + op.unicode_("lol") + (b"2" * 9 + b"l") * 9
    data = op.proto(2) + op.global_("os", "system") + arg + op.TUPLE1 + op.REDUCE + op.STOP
    report = scan_bytes(data, "model.pkl", explain=True)
    _fails(report, "PK-I01")
    [(_, view)] = report.files[0].explanations
    assert view.startswith("# the decompiled view would be") and "syntax nodes" in view, view


def test_explain_still_decompiles_an_ordinary_failing_pickle(scan_bytes):
    [(_, view)] = scan_bytes(SYSTEM, "model.pkl", explain=True).files[0].explanations
    assert "system('true')" in view, view


def test_unparsed_size_counts_shared_nodes_per_use_and_stops_on_a_cycle():
    import ast

    from tensorsafe.explain import unparsed_size

    leaf = ast.Constant("lol")
    shared = ast.List(elts=[leaf, leaf, leaf], ctx=ast.Load())
    outer = ast.List(elts=[shared, shared], ctx=ast.Load())
    assert unparsed_size(outer) == 1 + 1 + 2 * (1 + 1 + 3 * 1)  # outer, its ctx, twice (shared, ctx, 3 leaves)
    shared.elts.append(outer)
    assert unparsed_size(outer) is None
