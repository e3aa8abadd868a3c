"""What a model file is, for ``tensorsafe inspect``: the tensors of a torch checkpoint (wherever they
sit), the identification (:mod:`tensorsafe.converter.identify`) and the detected Stable Diffusion
family with its evidence, or why it is not one."""
from __future__ import annotations

import os

from tensorsafe.converter.families import detect
from tensorsafe.converter.identify import identification_lines, identify_tensors
from tensorsafe.converter.tensor_listing import TensorListing, from_inspection, list_tensors, read_scalar_values
from tensorsafe.errors import TensorsafeError
from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.sniff import Kind, sniff
from tensorsafe.report import printable
from tensorsafe.safetensors.inspect import inspect_file, to_dict, to_table


def family_report(shapes: dict[str, tuple[int, ...]], extras: dict | None = None) -> dict:
    """The detection with its evidence and assumptions; ``{"family": None, "reason": ...}`` when none."""
    try:
        d = detect(shapes, extras or {})
    except TensorsafeError as exc:
        return {"family": None, "reason": exc.message}
    return {"family": d.family, "variant": d.variant, "description": d.describe(),
            "prediction_type": d.prediction_type, "components": list(d.components),
            "ema": d.ema.available, "evidence": list(d.evidence), "assumptions": list(d.assumptions)}


def family_lines(report: dict) -> list[str]:
    if report.get("family") is None:
        return ["", f"Stable Diffusion family: none detected ({report['reason']})"]
    lines = ["", f"Stable Diffusion family: {report['description']}"]
    lines += [f"  evidence: {e}" for e in report["evidence"]]
    lines += [f"  assumed: {a}" for a in report["assumptions"]]
    return lines


def checkpoint_table(listing: TensorListing) -> tuple[dict, list[str]]:
    """A torch checkpoint's tensors, wherever they sit in it (after a clean scan): JSON form, text lines."""
    rows = [(name, ref.dtype.name, list(ref.shape), ref.nbytes) for name, ref in sorted(listing.tensors.items())]
    extras = {k: v for k, v in listing.extras.items() if isinstance(v, (int, float, str, bool))}
    total = sum(r[3] for r in rows)
    data = {"path": listing.path, "format": listing.format,
            "tensors": [{"name": n, "dtype": d, "shape": s, "bytes": b} for n, d, s, b in rows],
            "extras": extras, "totals": {"tensors": len(rows), "data_bytes": total}}
    width = max([4, *(len(printable(r[0])) for r in rows)])
    lines = [f"{printable(listing.path)}: {listing.format}, {len(rows):,} tensors", ""]
    lines += [f"{printable(n):<{width}}  {d:<6} {str(s):<22} {b:>14,}" for n, d, s, b in rows]
    lines += ["", f"totals: {len(rows):,} tensors, {total:,} bytes"]
    lines += [f"  {k} = {printable(str(v))}" for k, v in extras.items()]
    return data, lines


def inspect_local(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """``tensorsafe inspect`` of a local file: its table, what it is, and its SD family (JSON form, text lines)."""
    with MappedFile(path) as mf:
        kind = sniff(mf.span)
    if kind in (Kind.ZIP, Kind.PICKLE):
        listing = list_tensors(path)
        data, lines = checkpoint_table(listing)
    else:
        ins = inspect_file(path)
        listing = from_inspection(os.fspath(path), ins)
        listing.scalars = read_scalar_values(listing.path, listing.tensors)
        data, lines = to_dict(ins), to_table(ins).splitlines()
    return with_identification(data, lines, listing.dtypes(), listing.metadata, listing.scalars, listing.extras)


def with_identification(data: dict, lines: list[str], tensors: dict, metadata: dict | None = None,
                        scalars: dict | None = None, extras: dict | None = None) -> tuple[dict, list[str]]:
    """``data`` and ``lines`` with the identification and the SD family report added."""
    ident = identify_tensors(tensors, metadata, scalars=scalars, extras=extras)
    data["identification"] = ident.to_dict()
    data["model"] = family_report({n: tuple(s) for n, (_, s) in tensors.items()}, dict(extras or {}))
    sd_family = data["model"].get("family") is not None   # the family report shows the same evidence
    lines = lines + identification_lines(ident, evidence=not sd_family)
    if sd_family or ident.kind == "unknown":
        lines += family_lines(data["model"])
    return data, lines
