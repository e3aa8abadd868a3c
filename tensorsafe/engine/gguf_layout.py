"""Where a GGUF file's tensors lie, checked the way llama.cpp checks it before it trusts a byte.

``gguf_init_from_file`` (llama.cpp ``ggml/src/gguf.cpp``) refuses a tensor info whose name is 64
bytes or longer or repeats an earlier name, whose dimensions are negative or multiply past
``INT64_MAX``, whose ggml type is unknown or removed, or whose first dimension is not a whole
number of blocks; then it requires each offset to equal the running sum of the tensors before it,
each padded to ``general.alignment``. The model loader (``llama-model-loader.cpp``) then refuses a
tensor whose bytes run past the end of the file. A file it refuses is one we cannot read as it is
read, so it is never clean: the first reason is kept, naming the tensor.
"""
from __future__ import annotations

from tensorsafe.readers.ggml_types import GGML_TYPES, element_count_problem, tensor_nbytes

GGML_MAX_NAME = 64
"""ggml's name buffer: a tensor name must be shorter (it keeps a byte for the NUL)."""
GGML_MAX_DIMS = 4


class TensorLayout:
    """Tensor infos checked one at a time as the header is read, then against the file's size."""

    def __init__(self, alignment: int):
        self.alignment = alignment
        self.problem: str | None = None
        self._next_offset = 0
        self._names: set[bytes] = set()
        self._ends: list[tuple[int, bytes]] = []
        """(offset + bytes, name) of each tensor, in file order (so offsets rise)."""

    def add(self, name: bytes, dims: tuple[int, ...], type_id: int, offset: int) -> None:
        """One tensor info (``dims`` as read, at most ``GGML_MAX_DIMS``); keeps the first problem."""
        if self.problem is None:
            problem = self._check(name, dims, type_id, offset)
            if problem is not None:
                self.problem = f"tensor {_shown(name)} {problem}"

    def _check(self, name: bytes, dims: tuple[int, ...], type_id: int, offset: int) -> str | None:
        if len(name) >= GGML_MAX_NAME:
            return f"has a {len(name)}-byte name (GGML_MAX_NAME is {GGML_MAX_NAME}, the NUL included)"
        c_name = name.partition(b"\0")[0]  # ggml keeps and compares names as C strings
        if c_name in self._names:
            return "repeats the name of an earlier tensor"
        self._names.add(c_name)
        padded = dims + (1,) * (GGML_MAX_DIMS - len(dims))  # ggml's unused dimensions are 1
        ne = (padded[0], padded[1], padded[2], padded[3])
        shape_problem = element_count_problem(ne)
        if shape_problem is not None:
            return shape_problem
        ggml_type = GGML_TYPES.get(type_id)
        if ggml_type is None:
            return f"has ggml type {type_id}, which llama.cpp does not read (unknown or removed)"
        if ne[0] % ggml_type.block_size:
            return (f"rows hold {ne[0]:,} elements, not a multiple of the {ggml_type.name} block size "
                    f"{ggml_type.block_size}")
        if offset != self._next_offset:
            return (f"data offset is {offset:,}; llama.cpp expects {self._next_offset:,} (the tensors before "
                    f"it, each padded to general.alignment {self.alignment})")
        nbytes = tensor_nbytes(ggml_type, ne)
        self._ends.append((offset + nbytes, name))
        self._next_offset = offset + nbytes + (-nbytes) % self.alignment
        return None

    def check_data(self, data_start: int, file_size: int) -> None:
        """The data section, from ``data_start``, must hold every tensor's bytes (not the padding
        after the last: the model loader checks each tensor against the file's size)."""
        if self.problem is not None:
            return
        for end, name in self._ends:
            if data_start + end > file_size:
                self.problem = (f"tensor {_shown(name)} data runs to byte {data_start + end:,}, past the end of "
                                f"the file ({file_size:,} bytes): the tensor data is truncated or misplaced")
                return


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace")[:GGML_MAX_NAME])
