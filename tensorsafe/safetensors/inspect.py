"""``tensorsafe inspect``: a safetensors file's tensors, metadata and totals, from the header only."""
from __future__ import annotations

import os
from dataclasses import dataclass

from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.format_name import explain_format_error
from tensorsafe.readers.safetensors.layout import FileSource
from tensorsafe.readers.safetensors.model import HeaderFormatError, TensorInfo
from tensorsafe.readers.safetensors.read import read_unambiguous_header
from tensorsafe.report import printable
from tensorsafe.safetensors.validator import SAFETENSORS_SUFFIX


@dataclass
class Inspection:
    path: str
    file_size: int
    header_bytes: int
    tensors: list[TensorInfo]
    """In file order (by data offsets)."""
    metadata: dict[str, str] | None

    def totals(self) -> dict:
        by_dtype: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            row = by_dtype.setdefault(t.dtype, {"tensors": 0, "elements": 0, "bytes": 0})
            row["tensors"] += 1
            row["elements"] += t.elements
            row["bytes"] += t.nbytes
        return {"tensors": len(self.tensors), "elements": sum(r["elements"] for r in by_dtype.values()),
                "data_bytes": sum(r["bytes"] for r in by_dtype.values()), "header_bytes": self.header_bytes,
                "file_bytes": self.file_size, "by_dtype": dict(sorted(by_dtype.items()))}


def inspect_file(path: str | os.PathLike) -> Inspection:
    """The header of a file that passes every format rule, also those the reference lets through
    (ST-F08, ST-F10, ST-F11: ``validate`` fails them, so inspect shows no one reading of them);
    raises :class:`HeaderFormatError` otherwise."""
    path = os.fspath(path)
    with FileSource(path) as src:
        try:
            header = read_unambiguous_header(src)
        except HeaderFormatError as exc:
            exc.path = path
            with MappedFile(path) as mf:
                exc.message = explain_format_error(mf.span, exc.message,
                                                   named_safetensors=path.endswith(SAFETENSORS_SUFFIX))
            raise
    return Inspection(path, header.file_size, header.length, header.tensor_infos(), header.metadata)


def to_dict(ins: Inspection) -> dict:
    """The stable ``inspect --json`` form."""
    return {
        "path": ins.path,
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes,
                     "data_offsets": [t.begin, t.end]} for t in ins.tensors],
        "metadata": ins.metadata,
        "totals": ins.totals(),
    }


def to_table(ins: Inspection) -> str:
    """Readable text: one row per tensor, the metadata, the totals."""
    rows = [(printable(t.name), t.dtype, "[" + ", ".join(map(str, t.shape)) + "]", f"{t.nbytes:,}")
            for t in ins.tensors]
    head = ("name", "dtype", "shape", "bytes")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    lines = [f"{printable(ins.path)}: {len(rows):,} tensors", ""]
    fmt = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*head))
    lines.append(fmt.format(*("-" * w for w in widths)))
    lines += [fmt.format(*r) for r in rows]
    lines += ["", "metadata:" if ins.metadata else "metadata: (none)"]
    lines += [f"  {printable(k)} = {printable(_short(v))}" for k, v in sorted((ins.metadata or {}).items())]
    totals = ins.totals()
    lines += ["", f"totals: {totals['tensors']:,} tensors, {totals['elements']:,} elements, "
              f"{totals['data_bytes']:,} data bytes, {totals['header_bytes']:,} header bytes, "
              f"{totals['file_bytes']:,} bytes in the file"]
    lines += [f"  {dtype}: {r['tensors']:,} tensors, {r['elements']:,} elements, {r['bytes']:,} bytes"
              for dtype, r in totals["by_dtype"].items()]
    return "\n".join(lines)


def _short(value: str, limit: int = 200) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value):,} characters)"
