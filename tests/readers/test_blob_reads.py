"""tensorsafe/readers/blob.py: a mapped file's reads (``pread``) give exactly what slicing its bytes gives."""
from __future__ import annotations

import pytest

from tensorsafe.readers.blob import FileMap, MappedFile, Span

DATA = bytes(range(256)) * 40 + b"tail"


@pytest.fixture
def mapped(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(DATA)
    with MappedFile(path) as mf:
        yield mf


@pytest.mark.parametrize("offset,n", [(0, 8), (5, 0), (-3, 10), (len(DATA) - 2, 8), (len(DATA) + 5, 4),
                                      (100, -1), (4000, 4096), (0, len(DATA) + 10)])
def test_read_matches_slicing(mapped, offset, n):
    assert type(mapped.span.buf) is FileMap
    expected = Span.of_bytes(DATA).read(offset, n)
    assert mapped.span.read(offset, n) == expected
    sub = mapped.span.sub(1000, 2000)  # a window: reads stay inside it
    assert sub.read(offset, n) == Span.of_bytes(DATA[1000:3000]).read(offset, n)


def test_reader_at_reads_absolute_positions(mapped):
    for span in (mapped.span, mapped.span.sub(77, 500), Span.of_bytes(DATA)):
        read = span.reader_at()
        assert read(span.start + 3, span.start + 40) == DATA[span.start + 3:span.start + 40]


def test_reads_after_close_fail_instead_of_reading_another_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(DATA)
    mf = MappedFile(path)
    span = mf.span
    mf.close()
    with pytest.raises(ValueError):
        span.read(0, 4)
