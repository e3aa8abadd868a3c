"""Import policy, allowlist first: every import a pickle makes falls in one of four tiers.

The tables are data, near the top, with a one-line reason per entry, so a reviewer audits the
allowlist without reading control flow. Sources: torch 2.13 ``torch.save`` output and its
``weights_only`` allowlist (``torch._weights_only_unpickler._get_allowed_globals``), numpy 1.x/2.x
pickles, Lightning and transformers training checkpoints, Stable Diffusion v1 ``.ckpt`` files.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from tensorsafe.errors import PolicyFileError


class Tier(str, enum.Enum):
    ALLOWED = "allowed"
    BENIGN = "benign"
    UNKNOWN = "unknown"
    DANGEROUS = "dangerous"


# -- allowed: tensor rebuild functions, storages, dtypes, plain containers ----------------------
_TORCH_DTYPES = [
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex32", "complex64",
    "complex128", "cfloat", "cdouble", "uint8", "int8", "int16", "short", "int32", "int", "int64", "long",
    "bool", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
    "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5",
    "int6", "int7",
]
_TORCH_STORAGES = [
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage",
    "ComplexDoubleStorage", "QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage",
    "QUInt2x4Storage",
]
_TORCH_TENSOR_TYPES = [
    "FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor",
    "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor",
]
_TORCH_OTHER = [
    "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
    "per_channel_affine_float_qparams", "contiguous_format", "channels_last", "channels_last_3d",
    "preserve_format",
]

ALLOWED: dict[tuple[str, str], str] = {
    **{("torch._utils", f): "rebuilds a tensor from storage references (torch.save)" for f in [
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_nested_tensor"]},
    ("torch._tensor", "_rebuild_from_type_v2"): "re-types a rebuilt tensor (tensor subclasses, Parameter)",
    ("torch.nn.parameter", "Parameter"): "wraps a tensor as a parameter",
    ("torch", "Size"): "a shape tuple",
    ("torch", "device"): "a device name",
    ("torch", "Tensor"): "the tensor class (torch.save of subclasses)",
    ("torch.serialization", "_get_layout"): "looks up a tensor layout by name",
    ("torch.storage", "UntypedStorage"): "storage type tag in persistent ids",
    ("torch.storage", "TypedStorage"): "storage type tag in persistent ids",
    ("torch", "UntypedStorage"): "storage type tag in persistent ids",
    **{("torch", s): "storage type tag in persistent ids" for s in _TORCH_STORAGES},
    **{("torch.cuda", s): "storage type tag of tensors saved from a GPU" for s in _TORCH_STORAGES},
    **{("torch", t): "legacy tensor type tag" for t in _TORCH_TENSOR_TYPES},
    **{("torch.cuda", t): "legacy tensor type tag" for t in _TORCH_TENSOR_TYPES},
    **{("torch", d): "a dtype" for d in _TORCH_DTYPES},
    **{("torch", o): "a quantisation scheme or memory format" for o in _TORCH_OTHER},
    ("collections", "OrderedDict"): "state dicts are OrderedDicts",
    ("collections", "Counter"): "a dict of counts",
    ("collections", "defaultdict"): "a dict; its factory is judged as a call (INDIRECT_CALLERS)",
    ("collections", "deque"): "a plain sequence",
    **{("builtins", b): "a plain builtin container or number type" for b in [
        "set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "tuple", "list", "dict",
        "int", "float", "bool", "str", "object", "NoneType"]},
    ("_codecs", "encode"): "protocol-2 pickles store bytes as _codecs.encode(text, 'latin1')",
    ("copyreg", "_reconstructor"): "protocol-0/1 object rebuild; the classes it gets are judged as imports",
    **{(m, "_reconstruct"): "rebuilds a numpy array from its pickled state"
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): "rebuilds a numpy scalar from dtype and bytes"
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): "rebuilds a numpy array from a protocol-5 buffer"
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): "the numpy array type",
    ("numpy", "dtype"): "a numpy dtype",
    **{("numpy.random._pickle", f): "rebuilds a numpy random generator (numpy 1.17+); the class or ctor it "
       "calls is judged as a call (INDIRECT_CALLERS)" for f in ("__randomstate_ctor", "__bit_generator_ctor",
                                                               "__generator_ctor")},
    # numpy 2.x (checked 2.4.6) pickles a bit generator as __bit_generator_ctor(<class>) + BUILD((state, seed_seq));
    # calling the class seeds it (SeedSequence: arithmetic, OS entropy when no seed); BitGenerator.__setstate__
    # assigns the state dict through the class's validating ``state`` setter and keeps the seed sequence.
    **{(m, c): "a numpy bit generator class (numpy 2.x pickles name it; calling it only seeds it)" for m, c in [
        ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._philox", "Philox"), ("numpy.random._sfc64", "SFC64")]},
    ("numpy.random.bit_generator", "SeedSequence"): "numpy seed sequence (numpy 2.x); __init__ mixes integers, "
                                                    "or OS entropy when none is given",
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): "Cython pickle helper (numpy 2.x): checks a "
        "layout checksum, SeedSequence.__new__(cls), sets its typed fields from the state tuple",
    ("numpy.random", "__RandomState_ctor"): "numpy < 1.17 RandomState pickles (kept in numpy 2.4): takes no "
                                            "arguments, returns RandomState(seed=0); BUILD runs set_state",
    **{("numpy.dtypes", f"{t}DType"): "a numpy 2 dtype class" for t in [
        "Float16", "Float32", "Float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
        "UInt64", "Bool", "Complex64", "Complex128", "LongDouble", "Bytes", "Str"]},
    **{(m, "NumpyArrayWrapper"): "joblib's array header; the array bytes follow the pickle op"
       for m in ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")},
}

# -- benign: known inert metadata classes (reported, not failed) --------------------------------
# invocable=True: calling it with pickle-supplied arguments is known to be side-effect free.
BENIGN: dict[tuple[str, str], tuple[str, bool]] = {
    **{(m, "ModelCheckpoint"): ("Lightning callback used as a dict key in SD v1 .ckpt files", False)
       for m in ("pytorch_lightning.callbacks.model_checkpoint", "lightning.pytorch.callbacks.model_checkpoint")},
    **{(m, "EarlyStopping"): ("Lightning callback state", False)
       for m in ("pytorch_lightning.callbacks.early_stopping", "lightning.pytorch.callbacks.early_stopping")},
    **{("omegaconf." + m, n): ("OmegaConf hyper-parameters in Lightning checkpoints", False) for m, n in [
        ("dictconfig", "DictConfig"), ("listconfig", "ListConfig"), ("base", "ContainerMetadata"),
        ("base", "Metadata"), ("nodes", "AnyNode"), ("nodes", "StringNode"), ("nodes", "IntegerNode"),
        ("nodes", "FloatNode"), ("nodes", "BooleanNode"), ("nodes", "ValueNode")]},
    ("typing", "Any"): ("type annotation kept in OmegaConf metadata", False),
    ("argparse", "Namespace"): ("parsed command-line arguments in training checkpoints", True),
    **{("pathlib", p): ("a path value (no file access on construction)", True)
       for p in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path")},
    ("transformers.training_args", "TrainingArguments"): ("transformers training_args.bin", False),
    **{("transformers.trainer_utils", e): ("transformers enum value", True)
       for e in ("IntervalStrategy", "SchedulerType", "HubStrategy", "SaveStrategy", "FSDPOption")},
    ("transformers.training_args", "OptimizerNames"): ("transformers enum value", True),
    ("accelerate.utils.dataclasses", "DistributedType"): ("accelerate enum value", True),
    ("datetime", "datetime"): ("a timestamp", True),
    ("datetime", "date"): ("a date", True),
    ("datetime", "timedelta"): ("a duration", True),
    ("datetime", "timezone"): ("a time zone offset", True),
    ("decimal", "Decimal"): ("a decimal number", True),
    ("uuid", "UUID"): ("an identifier", False),
    ("sklearn.preprocessing._label", "LabelEncoder"): (
        "scikit-learn label encoder (joblib.dump of a fitted LabelEncoder, scikit-learn 0.22+): built without "
        "arguments, then BUILD runs BaseEstimator.__setstate__, which only compares _sklearn_version and "
        "updates __dict__ (checked in scikit-learn 1.9); its classes_ is an object array of strings", False),
    # training_args.bin since transformers PR #28664 (early 2024) with accelerate (checked 5.25.0 + accelerate 1.16.0):
    # both come as NEWOBJ() + BUILD(dict); neither defines __new__ nor __setstate__, so BUILD updates __dict__.
    ("transformers.trainer_pt_utils", "AcceleratorConfig"): (
        "transformers training_args.bin (a dataclass: NEWOBJ() + BUILD fills __dict__; __init__ not run)", False),
    ("accelerate.state", "PartialState"): (
        ("accelerate's distributed state in training_args.bin: NEWOBJ() + BUILD fills __dict__ (its __getattr__ "
         "only raises AttributeError for the __setstate__ lookup); its __init__ sets up distributed processes"), False),
}

# -- dangerous: known to run code or touch the system (fails, with what it can do) -------------
DANGEROUS_MODULES: dict[str, str] = {
    "os": "runs shell commands and reads, writes or deletes files",
    "posix": "runs shell commands and reads, writes or deletes files",
    "nt": "runs shell commands and reads, writes or deletes files",
    "subprocess": "runs programs",
    "_posixsubprocess": "runs programs",
    "pty": "spawns a shell",
    "sys": "changes the interpreter (modules, paths, hooks)",
    "shutil": "copies, moves and deletes files",
    "socket": "opens network connections",
    "ssl": "opens network connections",
    "http": "makes network requests",
    "urllib": "makes network requests",
    "requests": "makes network requests",
    "httpx": "makes network requests",
    "ftplib": "makes network requests",
    "smtplib": "sends mail",
    "telnetlib": "opens network connections",
    "webbrowser": "opens programs",
    "importlib": "imports any module",
    "pkgutil": "pkgutil.resolve_name can resolve any module:attribute",
    "runpy": "runs Python modules and files",
    "imp": "imports any module",
    "zipimport": "imports code from archives",
    "ctypes": "calls native code",
    "_ctypes": "calls native code",
    "cffi": "calls native code",
    "marshal": "loads code objects",
    "pickle": "unpickles nested data with real imports",
    "_pickle": "unpickles nested data with real imports",
    "cPickle": "unpickles nested data with real imports",
    "dill": "unpickles nested data, including code",
    "cloudpickle": "unpickles nested data, including code",
    "shelve": "unpickles files",
    "joblib": "unpickles files",
    "code": "runs Python source",
    "codeop": "compiles Python source",
    "pdb": "runs Python source in a debugger",
    "bdb": "runs Python source in a debugger",
    "timeit": "runs Python source",
    "profile": "runs Python source",
    "cProfile": "runs Python source",
    "trace": "runs Python source",
    "multiprocessing": "starts processes",
    "concurrent": "starts processes and threads",
    "asyncio": "runs subprocesses and network I/O",
    "threading": "starts threads",
    "_thread": "starts threads",
    "signal": "changes signal handlers",
    "tempfile": "creates files",
    "glob": "lists files",
    "io": "opens files",
    "_io": "opens files",
    "fileinput": "reads files",
    "linecache": "reads files",
    "sqlite3": "opens databases",
    "platform": "platform.popen runs commands",
    "distutils": "runs build commands",
    "setuptools": "runs build commands",
    "pip": "installs packages",
    "venv": "creates environments",
    "ensurepip": "installs packages",
    "site": "changes import paths",
    "operator": "attrgetter/methodcaller turn a pickle into a getattr-and-call gadget",
    "functools": "partial/reduce call arbitrary callables",
    "types": "builds functions and code objects",
    "inspect": "reaches frames and globals",
    "gc": "reaches every live object",
    "weakref": "reaches live objects",
    "yaml": "yaml.load builds arbitrary objects",
    "torch.hub": "downloads and runs code",
    "torch.jit": "compiles and runs TorchScript",
    "torch.package": "imports packaged Python code",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.fx": "generates and runs Python code",
    "torch._dynamo": "compiles and runs code",
    "torch._inductor": "compiles and runs code",
    "torch.testing": "test helpers that run code",
    "torch.distributed": "opens network connections and runs remote calls",
    "numpy.testing": "numpy.testing._private.utils.runstring runs Python source",
    "numpy.f2py": "compiles and runs code",
    "numpy.distutils": "runs commands",
    "numpy.lib.npyio": "loads pickled files",
    "pandas.io": "loads pickled files",
    "keras": "deserialises layers that run code",
    "tensorflow": "runs graph ops that touch files and the network",
    "builtins.__loader__": "imports modules",
    # fickling's unsafe list (fickle.UNSAFE_IMPORTS, checked in 0.1.12 and its main branch) and its
    # advisories: unknown imports fail anyway; known dangerous, a policy file cannot allow them
    "_operator": "the C operator module: attrgetter/methodcaller getattr-and-call gadgets",
    "pydoc": "pydoc.locate resolves any module:attribute",
    "_frozen_importlib": "imports any module",
    "_frozen_importlib_external": "imports any module",
    "_imp": "imports any module",
    "_interpreters": "runs Python source in a subinterpreter",
    "_xxsubinterpreters": "runs Python source in a subinterpreter",
    "_aix_support": "_read_cmd_output runs shell commands",
    "_osx_support": "_find_build_tool and others run shell commands",
    "uuid": "uuid._get_command_stdout runs programs (uuid.UUID is benign, by name)",
    "pexpect": "runs programs",
    "pipes": "runs shell pipelines",
    "doctest": "runs Python source",
    "idlelib": "runs Python source (the IDLE shell)",
    "lib2to3": "rewrites Python files",
    "compileall": "compiles and writes Python files",
    "py_compile": "compiles and writes Python files",
    "logging": "logging.FileHandler opens files; logging.config builds any class and listens on a socket",
    "atexit": "registers callables run at exit",
    "_signal": "changes signal handlers",
    "_sqlite3": "opens databases",
    "mmap": "maps files into memory",
    "filecmp": "reads files",
    "tarfile": "reads, writes and extracts archives",
    "zipfile": "reads, writes and extracts archives",
    "syslog": "writes to the system log",
    "select": "waits on sockets and file descriptors",
    "selectors": "waits on sockets and file descriptors",
    "socketserver": "starts network servers",
    "xmlrpc": "makes remote calls",
    "imaplib": "opens network connections",
    "poplib": "opens network connections",
    "nntplib": "opens network connections",
    "aiohttp": "makes network requests",
    "test": "CPython's test package: helpers that run code",
    "unittest": "unittest.mock calls anything; test loaders import and run code",
    "torch.compile": "compiles and runs code",
    "torch.utils._config_module": "config modules that load and run code",
    # fickling's ScannerDeactivation: a pickle has no business importing a scanner (it would switch checks off)
    **{m: "a pickle scanner: importing it can switch its checks off" for m in (
        "fickling", "picklescan", "modelscan", "modelaudit", "model_unpickler", "saferpickle", "tensorsafe")},
}
DANGEROUS_NAMES: dict[tuple[str, str], str] = {
    **{("builtins", n): r for n, r in {
        "eval": "evaluates Python source", "exec": "runs Python source", "compile": "compiles Python source",
        "__import__": "imports any module", "open": "opens files", "getattr": "reaches any attribute",
        "setattr": "changes any attribute", "delattr": "deletes any attribute",
        "globals": "reaches module globals", "locals": "reaches local variables", "vars": "reaches object internals",
        "breakpoint": "starts a debugger", "input": "reads the terminal", "help": "starts the help pager",
        "exit": "exits the process", "quit": "exits the process", "type": "builds classes",
        "memoryview": "exposes raw memory", "__build_class__": "builds classes", "super": "reaches base classes",
        "classmethod": "wraps callables", "staticmethod": "wraps callables", "property": "wraps callables",
        "print": "writes to the terminal", "map": "calls a function on every item",
        "filter": "calls a function on every item", "iter": "calls a function repeatedly", "next": "advances iterators",
        "apply": "calls any callable",
    }.items()},
    ("torch", "load"): "unpickles nested data",
    ("torch.serialization", "load"): "unpickles nested data",
    ("torch.storage", "_load_from_bytes"): "calls torch.load on embedded bytes (nested pickle)",
    ("numpy", "load"): "loads pickled files",
    ("numpy", "loads"): "unpickles nested data",
    ("pandas", "read_pickle"): "unpickles files",
}
DANGEROUS_ATTRIBUTES: dict[str, str] = {
    "system": "runs shell commands", "popen": "runs shell commands", "exec": "runs code", "eval": "runs code",
    "execv": "runs programs", "execve": "runs programs", "spawnv": "runs programs", "spawnl": "runs programs",
    "__import__": "imports any module", "getattr": "reaches any attribute", "__getattribute__": "reaches any attribute",
    "__globals__": "reaches module globals", "__builtins__": "reaches builtins", "__subclasses__": "reaches every class",
    "__code__": "reaches code objects", "__reduce__": "runs reduce hooks", "__reduce_ex__": "runs reduce hooks",
    "__dict__": "reaches object internals", "__class__": "reaches the class", "__bases__": "reaches base classes",
    "__mro__": "reaches base classes", "__call__": "calls the object", "__init__": "calls a constructor",
    "check_output": "runs programs", "check_call": "runs programs", "call": "runs programs", "run": "runs programs",
    "os": "reaches the os module", "subprocess": "reaches the subprocess module", "builtins": "reaches builtins",
    "sys": "reaches the interpreter", "loads": "deserialises data", "load": "deserialises data",
}

# -- loaders: bytes handed to these are scanned as nested pickles -------------------------------
NESTED_PICKLE_LOADERS: frozenset[tuple[str, str]] = frozenset({
    ("torch.storage", "_load_from_bytes"), ("torch", "load"), ("torch.serialization", "load"),
    ("pickle", "loads"), ("_pickle", "loads"), ("pickle", "load"), ("_pickle", "load"),
    ("dill", "loads"), ("cloudpickle", "loads"), ("numpy", "loads"), ("joblib", "load"),
})

# -- helpers that call one of their arguments: the argument is judged as a call ----------------
class Invoked(NamedTuple):
    """A positional argument a helper invokes. ``how``:

    ``called``: called with arguments the pickle chose; ``class_of``: the class of an object built
    with the state argument (``copyreg._reconstructor``: ``base.__new__(cls, state)``), or without
    arguments when the base is ``builtins.object``; ``name_or_class``: a str is looked up in a fixed
    table, a class is called with no arguments, a generator built by ``__bit_generator_ctor`` is used
    as it is (numpy); ``tensor``: a method of it is called, so it must be a tensor torch rebuilt.
    """

    index: int
    how: str = "called"


_NUMPY_PICKLE = "numpy.random._pickle"
INDIRECT_CALLERS: dict[tuple[str, str], tuple[Invoked, ...]] = {
    # obj = object.__new__(cls) if base is object, else base.__new__(cls, state); base.__init__(obj, state)
    ("copyreg", "_reconstructor"): (Invoked(0, "class_of"), Invoked(1)),
    # ret = func(*args); ret.as_subclass(new_type); new_type's __setstate__(state), or setattr per item
    ("torch._tensor", "_rebuild_from_type_v2"): (Invoked(0), Invoked(1)),
    # device tensor = data.to(dtype=..., device=...): calls a method that ``data`` brings
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): (Invoked(0, "tensor"),),
    # numpy 2.4 numpy/random/_pickle.py: bit_generator() when it is a class, else BitGenerators[name]
    (_NUMPY_PICKLE, "__bit_generator_ctor"): (Invoked(0, "name_or_class"),),
    # Generator/RandomState(bit_generator_ctor(name)) unless name is already a BitGenerator
    **{(_NUMPY_PICKLE, f): (Invoked(0, "name_or_class"), Invoked(1))
       for f in ("__generator_ctor", "__randomstate_ctor")},
    # Cython auto-pickle helper: SeedSequence.__new__(cls), then sets its typed fields from the state
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): (Invoked(0),),
    # the factory is called with no arguments on every missing key, after loading, by whoever reads it
    ("collections", "defaultdict"): (Invoked(0),),
}
# -- helpers that apply a state argument by setattr (torch._utils._set_obj_state): a ``__setstate__``
# it installs on the tensor is called by a later BUILD, so it is judged as a call; index of the state
STATE_SETTERS: dict[tuple[str, str], int] = {
    ("torch._tensor", "_rebuild_from_type_v2"): 3,
    ("torch._utils", "_rebuild_parameter_with_state"): 3,
}
# Not indirect callers, checked in torch 2.13: ``_rebuild_parameter_with_state`` (setattr on a real
# Parameter), ``_rebuild_device_tensor_from_numpy`` (``torch.from_numpy`` accepts only arrays; the
# device goes through a map_location lookup, never called), ``_rebuild_tensor*``, ``_rebuild_qtensor``,
# ``_rebuild_sparse_tensor``, ``_rebuild_nested_tensor`` (torch functions on the arguments).
# ``_rebuild_wrapper_subclass`` and ``functools`` are not allowed at all. ``None`` in an invoked
# position is never a finding: calling it raises TypeError.


@dataclass(frozen=True)
class Judgement:
    tier: Tier
    reason: str
    invocable: bool = True


class Policy:
    """The allowlist-first policy; :meth:`extended` adds entries from a policy file."""

    allow_unscanned: bool = False
    """Let a file that no reader identifies pass (never one with a model extension): a policy-file switch."""
    source: str = "built-in"
    """Where the policy came from: ``built-in``, a policy file, or a pyproject's ``[tool.tensorsafe]`` table."""
    header_limits: tuple[tuple[str, int], ...] = ()
    """The policy's ``[limits]`` table (safetensors header limits) as sorted (name, value) pairs."""

    def __init__(self, allowed: dict[tuple[str, str], str] | None = None,
                 benign: dict[tuple[str, str], tuple[str, bool]] | None = None):
        self.allowed = dict(ALLOWED if allowed is None else allowed)
        self.benign = dict(BENIGN if benign is None else benign)

    def extended(self, allow: Iterable[str] = (), benign: Iterable[str] = (), source: str = "policy") -> "Policy":
        """A copy with more entries; entries known to be dangerous are refused, not allowed."""
        new = Policy(self.allowed, self.benign)
        new.allow_unscanned, new.source, new.header_limits = self.allow_unscanned, self.source, self.header_limits
        for entry in allow:
            key = parse_import(entry, source)
            _refuse_dangerous(key, entry, source)
            new.allowed[key] = f"allowed by {source}"
        for entry in benign:
            key = parse_import(entry, source)
            _refuse_dangerous(key, entry, source)
            new.benign[key] = (f"marked benign by {source}", False)
        return new

    def judge(self, module: str, name: str) -> Judgement:
        key = (module, name)
        if key in self.allowed:
            return Judgement(Tier.ALLOWED, self.allowed[key])
        if key in self.benign:
            reason, invocable = self.benign[key]
            return Judgement(Tier.BENIGN, reason, invocable)
        danger = dangerous_reason(module, name)
        if danger:
            return Judgement(Tier.DANGEROUS, danger, False)
        return Judgement(Tier.UNKNOWN, "not in the allowlist", False)


def dangerous_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is known dangerous, or None. Dotted names are walked part by part."""
    if (module, name) in DANGEROUS_NAMES:
        return DANGEROUS_NAMES[(module, name)]
    parts = f"{module}.{name}".split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in DANGEROUS_MODULES:
            return f"{prefix}: {DANGEROUS_MODULES[prefix]}"
    head = module.split(".")[0]
    first = name.split(".")[0]
    if (head, first) in DANGEROUS_NAMES:
        return DANGEROUS_NAMES[(head, first)]
    for part in parts[1:]:
        if part in DANGEROUS_ATTRIBUTES:
            return f"attribute {part!r}: {DANGEROUS_ATTRIBUTES[part]}"
    return None


def parse_import(entry: str, source: str = "policy") -> tuple[str, str]:
    """``module:name`` (exact) or ``module.name`` (split at the last dot)."""
    text = entry.strip()
    if ":" in text:
        module, _, name = text.partition(":")
    else:
        module, _, name = text.rpartition(".")
    if not module or not name or any(c.isspace() for c in text):
        raise PolicyFileError(f"bad import entry {entry!r}: expected 'module:name' or 'module.name'", path=source)
    return module, name


def _refuse_dangerous(key: tuple[str, str], entry: str, source: str) -> None:
    reason = dangerous_reason(*key)
    if reason:
        raise PolicyFileError(f"refusing to allow {entry!r}: it is known dangerous ({reason})", path=source)


DEFAULT_POLICY = Policy()
