"""What a checkpoint is, for ``tensorsafe inspect``: tensors of a torch checkpoint and the detected
Stable Diffusion family with its evidence, or why it is not one."""
from __future__ import annotations

import os

from tensorsafe.errors import TensorsafeError


def family_report(shapes: dict[str, tuple[int, ...]], extras: dict | None = None) -> dict:
    """The detection with its evidence and assumptions; ``{"family": None, "reason": ...}`` when none."""
    from tensorsafe.convert.families import detect

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


def checkpoint_table(path: str | os.PathLike) -> tuple[dict, list[str], dict, dict]:
    """A torch checkpoint's tensors (after a clean scan): JSON form, text lines, shapes, extras."""
    from tensorsafe.checkpoint import read_checkpoint
    from tensorsafe.report import printable

    ckpt = read_checkpoint(path)
    rows = [(name, ref.dtype.name, list(ref.shape), ref.nbytes) for name, ref in sorted(ckpt.tensors.items())]
    data = {"path": os.fspath(path), "format": ckpt.format,
            "tensors": [{"name": n, "dtype": d, "shape": s, "bytes": b} for n, d, s, b in rows],
            "extras": {k: v for k, v in ckpt.extras.items() if isinstance(v, (int, float, str, bool))},
            "totals": {"tensors": len(rows), "data_bytes": sum(r[3] for r in rows)}}
    width = max([4, *(len(printable(r[0])) for r in rows)])
    lines = [f"{printable(os.fspath(path))}: {ckpt.format}, {len(rows):,} tensors", ""]
    lines += [f"{printable(n):<{width}}  {d:<6} {str(s):<22} {b:>14,}" for n, d, s, b in rows]
    lines += ["", f"totals: {len(rows):,} tensors, {data['totals']['data_bytes']:,} bytes"]
    lines += [f"  {k} = {v}" for k, v in data["extras"].items()]
    return data, lines, {n: tuple(s) for n, _, s, _ in rows}, ckpt.extras
