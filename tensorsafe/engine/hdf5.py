"""HDF5 files: legacy Keras models (``model.save("x.h5")``) and plain weight or data files.

A legacy Keras file keeps its model as JSON in the root attributes ``model_config`` (and the
compile settings in ``training_config``); those are judged like a ``.keras`` config. Datasets are
numbers that h5py reads as arrays, so an HDF5 file without a model config is data and is
identified as ``hdf5``. Read with h5py (the optional ``formats`` extra); without it the file is
KERAS-03, unscanned. Bytes in a user block in front of the HDF5 superblock are what
``pickle.load`` would read: the scanner walks every file's front as a pickle (``scan_pickle_front``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.engine.keras_model import MAX_KERAS_CONFIG_BYTES, judge_config
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

KERAS_ATTRIBUTES = ("model_config", "training_config")


def scan_hdf5(fs: FileScan, span: Span, location: Location, depth: int) -> None:
    kind_index = len(fs.kinds)
    fs.note_kind("hdf5")
    try:
        import h5py
    except ImportError:
        fs.add("KERAS-03", "HDF5 file (a Keras model or weights) not read: install h5py (the `formats` extra) "
               "to scan it: unscanned", location, "h5py")
        return
    try:
        configs = _read_configs(h5py, span)
    except _Unreadable as exc:
        fs.add("KERAS-03", f"HDF5 {exc}", location)
        return
    except Exception as exc:  # noqa: BLE001 (h5py raises OSError, KeyError, ValueError, RuntimeError... on bad files)
        fs.add("KERAS-03", f"HDF5 file cannot be read by h5py ({type(exc).__name__}: {exc}): unscanned", location)
        return
    if configs:
        fs.kinds[kind_index] = "keras-hdf5"
    for name, raw in configs:
        judge_config(fs, raw, location, f"HDF5 attribute {name}")


class _Unreadable(Exception):
    pass


def _read_configs(h5py, span: Span) -> list[tuple[str, bytes]]:
    out = []
    with h5py.File(span.reader(), "r") as f:
        for name in KERAS_ATTRIBUTES:
            if name not in f.attrs:
                continue
            attr = f.attrs.get_id(name)
            if attr.get_storage_size() > MAX_KERAS_CONFIG_BYTES:
                raise _Unreadable(f"attribute {name} is larger than {MAX_KERAS_CONFIG_BYTES:,} bytes "
                                  "(limit MAX_KERAS_CONFIG_BYTES)")
            value = f.attrs[name]
            if hasattr(value, "shape") and value.shape in ((), (1,)):
                value = value.reshape(()).item()
            if isinstance(value, str):
                value = value.encode("utf-8", "surrogatepass")
            if not isinstance(value, bytes):
                raise _Unreadable(f"attribute {name} is not a string ({type(value).__name__}): the Keras config "
                                  "cannot be judged")
            if len(value) > MAX_KERAS_CONFIG_BYTES:
                raise _Unreadable(f"attribute {name} is larger than {MAX_KERAS_CONFIG_BYTES:,} bytes "
                                  "(limit MAX_KERAS_CONFIG_BYTES)")
            out.append((name, value))
    return out
