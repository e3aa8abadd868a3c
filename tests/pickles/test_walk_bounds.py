"""Every pickle walk ends in bounded memory and at an exact opcode limit (issue: Bounded)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tensorsafe.limits import ScanLimits
from tensorsafe.pickles.walker import walk
from tests.conftest import rule_ids

PROTO2 = b"\x80\x02"


@pytest.mark.parametrize("name,body", [
    ("dicts left on the stack", b"}" * 3000),
    ("tuples nested in tuples", b"}" + b"\x85" * 3000),
    ("dicts appended to one list", b"]" + b"}a" * 3000),
    ("items set in one dict", b"}" + b"K\x01N" * 1500 + b"s" * 1500),
    ("a marked tuple", b"(" + b"N" * 3000 + b"t"),
    ("values kept in the memo", b"N" + b"q\x01" * 0 + b"".join(b"r" + i.to_bytes(4, "little") for i in range(3000))),
    ("a list built from marks", b"(" + b"}" * 3000 + b"l"),
    ("pairs nested in pairs", b"}" + b"}\x86" * 1500),
    ("triples nested in triples", b"}" + b"}}\x87" * 1000),
    ("calls holding their arguments", b"(" + b"cbuiltins\nset\n)R" * 600 + b"l"),
])
def test_values_held_past_the_bound_are_a_memory_limit(scan_bytes, name, body):
    limits = ScanLimits(max_values=1000)
    report = scan_bytes(PROTO2 + body + b"N.", limits=limits)
    assert "PK-L02" in rule_ids(report), name
    assert report.exit_code == 2


def test_a_stream_within_the_value_bound_is_clean(scan_bytes):
    assert scan_bytes(PROTO2 + b"]" + b"}a" * 400 + b".", limits=ScanLimits(max_values=1000)).exit_code == 0


def test_popped_values_do_not_count_against_the_bound():
    assert walk(PROTO2 + b"}0" * 50_000 + b"N.", max_values=1000).error is None


def test_the_opcode_limit_is_exact():
    stream = PROTO2 + b"N0" * 499 + b"N."  # PROTO + 998 + NONE + STOP = 1,001 opcodes
    assert walk(stream, max_opcodes=1001).error is None
    trace = walk(stream, max_opcodes=1000)
    assert trace.error is not None and trace.error.limit == "MAX_OPCODES"


def test_the_opcode_limit_is_exact_past_many_chunks():
    n = 100_000
    stream = PROTO2 + b"N0" * n + b"N."
    assert walk(stream, max_opcodes=2 * n + 3).error is None
    assert walk(stream, max_opcodes=2 * n + 2).error.limit == "MAX_OPCODES"


@pytest.mark.slow
def test_thirty_megabytes_of_empty_dicts_stay_under_a_memory_cap(tmp_path):
    """The issue's case: 30 MB of EMPTY_DICT took 2.1 GB and exited 0."""
    path = tmp_path / "dicts.pkl"
    path.write_bytes(PROTO2 + b"}" * 30_000_000 + b".")
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from tensorsafe.cli.main import main
        sys.argv = ["tensorsafe", "scan", {str(path)!r}]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "PK-L02" in result.stdout and "Traceback" not in result.stderr


def test_a_decompression_bomb_is_held_once(tmp_path):
    """Reaching the decompression limit costs about the limit in memory, not twice it."""
    import zlib

    limit = 200 << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    path = tmp_path / "bomb.gz"
    with open(path, "wb") as out:
        for _ in range(260):
            out.write(packer.compress(bytes(1 << 20)))
        out.write(packer.flush())
    script = textwrap.dedent(f"""
        import resource, sys
        import tensorsafe
        from tensorsafe.limits import ScanLimits
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = tensorsafe.scan({str(path)!r}, limits=ScanLimits(max_decompressed_bytes={limit}))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(sorted({{f.rule_id for f in report.findings}}), (after - before) * 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    rules, grown = result.stdout.rsplit(" ", 1)
    assert "ARC-03" in rules, result.stdout + result.stderr[-2000:]
    assert int(grown) < 1.5 * limit, f"grew {int(grown):,} bytes for a {limit:,}-byte limit"


def _cli_under_cap(path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from tensorsafe.cli.main import main
        sys.argv = ["tensorsafe", "scan", *{list(args)!r}, {str(path)!r}]
        main()
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)


def test_a_hundred_thousand_gzip_members_through_the_cli(tmp_path):
    """The issue's case: 10^5 empty members (a 2 MB file) took past 60 s and ignored --timeout."""
    import gzip

    path = tmp_path / "members.gz"
    payload = PROTO2 + b"cos\nsystem\n(S'true'\ntR."
    path.write_bytes(gzip.compress(b"", mtime=0) * 100_000 + gzip.compress(payload, mtime=0))
    result = _cli_under_cap(path, timeout=60)
    assert result.returncode == 1 and "PK-I01" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    stopped = _cli_under_cap(path, "--timeout", "0.05", timeout=60)
    assert stopped.returncode == 2 and "IO-02" in stopped.stdout, stopped.stdout[-2000:] + stopped.stderr[-2000:]


def test_a_joblib_shape_of_a_hundred_thousand_huge_dimensions_through_the_cli(tmp_path):
    """The issue's case: 10^5 dimensions of 2^63-1 (a 1 MB file) took 34 s and ignored --timeout."""
    dims = b"".join(b"\x8a\x08" + (2**63 - 1).to_bytes(8, "little") for _ in range(100_000))
    state = (b"}(\x8c\x05shape(" + dims + b"t\x8c\x05order\x8c\x01C\x8c\x05dtype\x8c\x05numpy\x8c\x05dtype\x93"
             b"\x8c\x02f8\x89\x88\x87R(K\x03\x8c\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             b"\x8c\x0aallow_mmap\x89u")
    wrapper = b"\x8c\x13joblib.numpy_pickle\x8c\x11NumpyArrayWrapper\x93)\x81" + state + b"b"
    path = tmp_path / "shape.joblib"
    path.write_bytes(b"\x80\x04" + wrapper + b".")
    result = _cli_under_cap(path, timeout=60)
    assert result.returncode == 2 and "JOBLIB-01" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
