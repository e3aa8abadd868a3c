"""Hypothesis strategies for the property tests: opcode soups, plain data, byte mutations.

Opcode soups are sequences of well-formed (or deliberately malformed) opcodes built by hand,
so that shrinking gives a short, readable stream. Import names mix the allowlist, Python 2
names that the loader maps, benign metadata classes, names in no list and known-dangerous ones.
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from tests import pickle_ops as ops

ALLOWED_NAMES = [
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("builtins", "set"),
    ("_codecs", "encode"), ("torch", "FloatStorage"), ("copyreg", "_reconstructor"), ("__builtin__", "set"),
    ("builtins", "object"), ("numpy", "dtype"), ("joblib.numpy_pickle", "NumpyArrayWrapper"),
]
BENIGN_NAMES = [("argparse", "Namespace"), ("datetime", "datetime")]
UNKNOWN_NAMES = [("mymodule", "Thing"), ("collections", "namedtuple"), ("torch", "nn")]
DANGEROUS_NAMES = [
    ("os", "system"), ("builtins", "eval"), ("posix", "system"), ("subprocess", "Popen"),
    ("builtins", "getattr"), ("__builtin__", "eval"), ("torch.serialization", "load"), ("nt", "system"),
]
NAMES = ALLOWED_NAMES + BENIGN_NAMES + UNKNOWN_NAMES + DANGEROUS_NAMES

WEIRD_LINES = [b"0", b"1", b"00", b"01", b"-1", b"0x10", b"017", b"08", b"1_0", b"1\x00x", b"\x00", b" 5",
               b"5 ", b"1L", b"1.5", b"inf", b"nan", b"1e999", b"", b"+0", b"0b1", b"9" * 25, b"'a'", b"'a\\"]
line_text = st.sampled_from(WEIRD_LINES) | st.binary(max_size=4).filter(lambda b: b"\n" not in b)
short_text = st.sampled_from(["os", "system", "builtins", "eval", "collections", "OrderedDict", "a", ""]) | \
    st.text(max_size=6)
index = st.integers(0, 4)


def _str_op(text: str, kind: int) -> bytes:
    if kind == 0:
        return ops.unicode_(text)
    if kind == 1:
        return ops.binunicode(text)
    raw = text.encode("utf-8")
    if kind == 2:
        return b"S" + repr(raw)[1:].encode("latin-1") + b"\n"
    if kind == 3:
        return b"T" + struct.pack("<i", len(raw)) + raw
    return b"V" + text.encode("raw-unicode-escape") + b"\n"


string_op = st.builds(_str_op, short_text, st.integers(0, 4))


def _global(pair, opcode: str) -> bytes:
    module, name = pair
    if opcode == "GLOBAL":
        return ops.global_(module, name)
    if opcode == "INST":
        return ops.inst(module, name)
    return ops.unicode_(module) + ops.unicode_(name) + ops.STACK_GLOBAL


import_op = st.builds(_global, st.sampled_from(NAMES), st.sampled_from(["GLOBAL", "INST", "STACK_GLOBAL"]))
payload_op = st.builds(
    lambda pair, style: {"global": ops.global_(*pair) + b"(" + ops.string("true") + b"tR0",
                         "stack": ops.unicode_(pair[0]) + ops.unicode_(pair[1]) + b"\x93" + ops.unicode_("true")
                         + b"\x85R0",
                         "inst": b"(" + ops.string("true") + ops.inst(*pair) + b"0"}[style],
    st.sampled_from(DANGEROUS_NAMES), st.sampled_from(["global", "stack", "inst"]))
"""A balanced payload: pushes ``module.name("true")`` and pops the result, leaving the stack as it was."""

SIMPLE_OPS = [b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"l", b"a", b"e", b"}", b"d", b"s", b"u",
              b"\x8f", b"\x90", b"\x91", b"0", b"1", b"2", b"R", b"\x81", b"\x92", b"o", b"b", b"N", b"\x88",
              b"\x89", b"\x94", b"Q", b"\x97", b"\x98", b".", b"\x93"]

token = st.one_of(
    st.sampled_from(SIMPLE_OPS),
    string_op,
    import_op,
    payload_op,
    st.builds(lambda n: b"K" + bytes([n]), st.integers(0, 255)),
    st.builds(lambda i: ops.binput(i), index),
    st.builds(lambda i: ops.binget(i), index),
    st.builds(lambda i: ops.long_binput(i), index),
    st.builds(lambda i: ops.long_binget(i), index),
    st.builds(lambda c, t: c + t + b"\n", st.sampled_from([b"I", b"L", b"F", b"g", b"p", b"P"]), line_text),
    st.builds(lambda c, t: c + t + b"\n", st.sampled_from([b"I", b"L", b"F"]), st.sampled_from(WEIRD_LINES)),
    st.builds(lambda n: b"\x82" + bytes([n]), st.integers(0, 3)),
    st.builds(lambda b: ops.binbytes(b), st.binary(max_size=6)),
    st.builds(lambda p: ops.proto(p), st.integers(0, 6)),
    st.binary(min_size=1, max_size=3),
)


@st.composite
def opcode_soup(draw) -> bytes:
    """A pickle-ish stream: optional PROTO, optional FRAME around the body, usually a STOP."""
    body = b"".join(draw(st.lists(token, min_size=1, max_size=24)))
    if draw(st.booleans()):
        body += b"."
    if draw(st.integers(0, 4)) == 0:
        slack = draw(st.sampled_from([0, 0, 0, -1, 1]))
        body = b"\x95" + struct.pack("<Q", max(0, len(body) + slack)) + body
    if draw(st.booleans()):
        body = ops.proto(draw(st.sampled_from([2, 3, 4, 5, 6]))) + body
    return body


# -- plain Python data -------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.binary(max_size=12))
keys = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8) | \
    st.tuples(st.integers(), st.text(max_size=4))


def _containers(children):
    return (st.lists(children, max_size=5) | st.tuples(children) | st.tuples(children, children)
            | st.tuples(children, children, children) | st.lists(children, max_size=5).map(tuple)
            | st.dictionaries(keys, children, max_size=5))


plain_data = st.recursive(scalars, _containers, max_leaves=20)
"""Nested dicts, lists, tuples, str, bytes, int, float, bool and None: no imports at protocol >= 3."""

hashables = st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.binary(max_size=6) | \
    st.floats(allow_nan=False)


# -- byte mutations ----------------------------------------------------------------------------
@st.composite
def mutation(draw, size: int, boundaries: list[int] | None = None):
    """One edit of a ``size``-byte file, as a (description, function) pair."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "splice", "splice@op"]
                                if boundaries else
                                ["flip", "truncate", "insert", "delete", "overwrite", "splice"]))
    if kind == "splice@op":
        pos = draw(st.sampled_from(boundaries))
    else:
        pos = draw(st.integers(0, max(0, size - 1)))
    if kind == "flip":
        mask = draw(st.sampled_from([1, 2, 4, 0x80, 0xFF]) | st.integers(1, 255))
        def flip(d: bytes) -> bytes:
            if not d:
                return d
            i = pos % len(d)
            return d[:i] + bytes([d[i] ^ mask]) + d[i + 1:]
        return f"flip {pos} ^ {mask:#x}", flip
    if kind == "truncate":
        return f"truncate to {pos}", lambda d: d[:pos]
    if kind == "insert":
        blob = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b".", b"(", b"N", b"\x80\x02", b"\n"]))
        return f"insert {blob!r} at {pos}", lambda d: d[:pos] + blob + d[pos:]
    if kind == "delete":
        n = draw(st.integers(1, 16))
        return f"delete {n} at {pos}", lambda d: d[:pos] + d[pos + n:]
    if kind == "overwrite":
        blob = draw(st.binary(min_size=1, max_size=8))
        return f"overwrite {blob!r} at {pos}", lambda d: d[:pos] + blob + d[pos + len(blob):]
    blob = draw(payload_op)
    return f"{kind} {blob!r} at {pos}", lambda d: d[:pos] + blob + d[pos:]


@st.composite
def mutations(draw, size: int, boundaries: list[int] | None = None):
    """One to three edits, applied in order; returns (description, function)."""
    edits = draw(st.lists(mutation(size, boundaries), min_size=1, max_size=3))

    def apply(data: bytes) -> bytes:
        for _, fn in edits:
            data = fn(data)
        return data

    return "; ".join(desc for desc, _ in edits), apply
