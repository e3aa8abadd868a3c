"""Every rule tensorsafe reports, with its stable id.

Policy is data: one entry per rule, with the outcome it has by default and the sentence a
person reads in text, JSON and SARIF output. ``docs/rules.md`` is generated from this table.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(str, enum.Enum):
    """What a finding does to the verdict."""

    FAIL = "fail"    # the file breaks the policy: exit code 1
    ERROR = "error"  # the file could not be read or fully parsed: exit code 2 (never "clean")
    WARN = "warn"    # reported, does not fail the check
    INFO = "info"    # advisory


class Severity(str, enum.Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    outcome: Outcome
    severity: Severity
    summary: str
    help: str


def _rule(rule_id: str, name: str, outcome: Outcome, severity: Severity, summary: str, help: str) -> Rule:
    return Rule(rule_id, name, outcome, severity, summary, help)


F, E, W, I = Outcome.FAIL, Outcome.ERROR, Outcome.WARN, Outcome.INFO
CRIT, HIGH, MED, LOW, INF = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO

RULES: dict[str, Rule] = {r.id: r for r in [
    # --- imports found in a pickle -------------------------------------------------------------
    _rule("PK-I01", "dangerous-import", F, CRIT,
          "The pickle imports a callable known to run code or touch the system.",
          "Do not load this file. Loading it with pickle or torch.load(weights_only=False) runs the import."),
    _rule("PK-I02", "unknown-import", F, HIGH,
          "The pickle imports something outside the allowlist (fail closed).",
          "If you trust the import, add it to the allowlist in a policy file (`allow = [\"module:name\"]`)."),
    _rule("PK-I03", "benign-import", W, LOW,
          "The pickle references a known inert metadata class (reported, not failed).",
          "Nothing to do; the class is reviewed as inert when it is only referenced or rebuilt without arguments."),
    _rule("PK-I04", "unresolvable-import", F, HIGH,
          "The pickle imports a name that cannot be known without running it (computed operands, extension codes).",
          "Legitimate checkpoints import by literal names; treat this file as hostile."),
    # --- what is done with imports ------------------------------------------------------------
    _rule("PK-C01", "computed-callable", F, CRIT,
          "The pickle calls a value that is not an imported global (a call result, a memo trick).",
          "Legitimate checkpoints only call imported functions and classes; treat this file as hostile."),
    _rule("PK-C02", "benign-class-invoked", F, HIGH,
          "A class allowed only as inert metadata is called with arguments, which runs its constructor.",
          "Allow the class explicitly in a policy file if this is expected."),
    _rule("PK-C03", "imported-object-modified", F, CRIT,
          "The pickle modifies an imported module, class or function (BUILD or item assignment on it).",
          "This is how a pickle monkey-patches a loader; treat this file as hostile."),
    _rule("PK-C04", "nested-pickle", W, MED,
          "The pickle hands bytes to a loader; the bytes were scanned as a nested pickle.",
          "See the findings located inside the nested pickle."),
    # --- pickle structure ---------------------------------------------------------------------
    _rule("PK-S01", "invalid-pickle", E, HIGH,
          "The pickle stream is invalid (unknown opcode, bad argument, stack or memo error).",
          "A stream that cannot be parsed cannot be judged; re-save the file from a trusted source."),
    _rule("PK-S02", "truncated-pickle", E, HIGH,
          "The pickle stream ends before its STOP opcode or an argument runs past the end.",
          "The file is truncated or corrupted; download it again."),
    _rule("PK-S03", "data-after-stop", E, MED,
          "Bytes follow the last STOP opcode and do not form another pickle.",
          "A loader that reads on after STOP would see them; re-save the file from a trusted source."),
    _rule("PK-S04", "multiple-pickles", W, LOW,
          "The stream holds several concatenated pickles; every one was scanned.",
          "Only some loaders read past the first STOP; the findings cover all of them."),
    _rule("PK-S05", "out-of-band-buffer", E, MED,
          "The pickle refers to protocol-5 out-of-band buffers that are not in the file.",
          "Such a stream cannot be loaded from a file alone."),
    _rule("PK-L01", "pickle-limit", E, HIGH,
          "A safety limit was hit while walking the pickle (size, opcodes, memo, time).",
          "The file may be hostile; raise the limit only for a file you trust."),
    _rule("PK-L02", "pickle-memory-limit", E, HIGH,
          "The pickle would hold more values at once than the walk's memory bound (MAX_VALUES).",
          "The file may be a memory bomb; raise the limit only for a file you trust."),
    _rule("PK-A01", "allocation-bomb", F, HIGH,
          "Allowed calls would make the loader allocate memory the file does not hold: bytearray(n), a container "
          "of range(n) or of a stride-0 tensor view, a numpy shape with no data behind it, past 1 GiB in one call "
          "or all together (MAX_LOAD_ALLOCATION_BYTES); or a torch storage claiming more bytes than the file "
          "stores for it.",
          "No pickler writes such a call; loading the file (even torch.load(weights_only=True)) can exhaust "
          "memory. Treat it as hostile."),
    # --- zip containers -----------------------------------------------------------------------
    _rule("ZIP-01", "zip-name-mismatch", F, HIGH,
          "A zip member's local header names a different file than the central directory.",
          "Different zip readers would see different members; treat this file as hostile."),
    _rule("ZIP-02", "zip-bad-crc", F, HIGH,
          "A zip member's data does not match its CRC-32.",
          "The member was altered after writing or the file is corrupted."),
    _rule("ZIP-03", "zip-unusual-flags", F, MED,
          "A zip member uses flag bits checkpoint writers never set (encryption, patched data, masked headers, reserved bits).",
          "Readers disagree on such members; re-save the file from a trusted source."),
    _rule("ZIP-04", "zip-duplicate-name", F, HIGH,
          "Two zip members have the same name; readers disagree on which one they load.",
          "Treat this file as hostile."),
    _rule("ZIP-05", "zip-prepended-data", F, HIGH,
          "Bytes precede the first zip member: a polyglot that torch.load reads as a legacy pickle.",
          "The front of the file was scanned too; re-save the file from a trusted source."),
    _rule("ZIP-06", "zip-overlapping-members", F, HIGH,
          "Zip members overlap or lie outside the file (a zip bomb or a parser trick).",
          "Treat this file as hostile."),
    _rule("ZIP-07", "zip-malformed", E, HIGH,
          "The zip structure cannot be read (bad central directory, bad local header, unsupported method).",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("ZIP-08", "zip-size-mismatch", F, MED,
          "A zip member's sizes disagree between its local header, its central entry and its data.",
          "Readers disagree on where the member ends; re-save the file from a trusted source."),
    _rule("ZIP-09", "torchscript-code", W, MED,
          "The archive holds TorchScript code, which torch.jit.load compiles and runs.",
          "Load it with torch.load(weights_only=True) or convert it to safetensors; do not torch.jit.load it unless you trust it."),
    _rule("ZIP-10", "model-archive-code", F, HIGH,
          "A TorchServe model archive (.mar) holds Python code (handler, model or extra file) that serving the model imports.",
          "Read the code before serving the archive, or serve its weights with a handler you control."),
    # --- other archives and compression -------------------------------------------------------
    _rule("ARC-01", "nesting-too-deep", E, HIGH,
          "Archives are nested deeper than the limit.",
          "Raise --max-depth only for a file you trust."),
    _rule("ARC-02", "decompression-failed", E, HIGH,
          "A compressed stream or archive member could not be decompressed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("ARC-03", "decompressed-size-limit", E, HIGH,
          "A compressed stream decompresses past the size limit (a compression bomb or a very large file).",
          "Raise --max-decompressed only for a file you trust."),
    _rule("ARC-04", "archive-path-traversal", F, HIGH,
          "An archive member name is an absolute path or climbs out with '..' (or is a link).",
          "Extracting it writes outside the target folder; treat this file as hostile."),
    _rule("ARC-05", "archive-malformed", E, HIGH,
          "The archive structure cannot be read.",
          "The file is corrupted or crafted; it cannot be judged."),
    # --- numpy, joblib, legacy torch ----------------------------------------------------------
    _rule("NPY-01", "numpy-object-array", W, MED,
          "A .npy array holds Python objects, stored as a pickle; loading it needs allow_pickle=True.",
          "The pickle was scanned; prefer numeric arrays or safetensors."),
    _rule("NPY-02", "numpy-malformed", E, HIGH,
          "A .npy header cannot be parsed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("TORCH-01", "legacy-trailing-data", F, MED,
          "Bytes follow the storages of a legacy torch.save file.",
          "Appended data is a polyglot trick; re-save the file from a trusted source."),
    _rule("TORCH-02", "legacy-malformed", E, HIGH,
          "The layout of a legacy (pre-1.6) torch.save file cannot be followed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("JOBLIB-01", "joblib-array-unreadable", E, HIGH,
          "A joblib array payload inside the pickle cannot be located.",
          "The file is corrupted or crafted; it cannot be judged."),
    # --- files --------------------------------------------------------------------------------
    _rule("IO-01", "unreadable-file", E, HIGH,
          "The file could not be read, or not all of it: it holds more bytes than its size says (a /proc or "
          "FUSE file, a file still being written), which a loader would read too.",
          "Check the path and permissions; scan a file once it is complete, from a regular file system."),
    _rule("IO-02", "scan-time-limit", E, HIGH,
          "Scanning the file took longer than the time limit.",
          "Raise --timeout only for a file you trust."),
    _rule("IO-03", "remote-read-failed", E, HIGH,
          "A file on the Hugging Face Hub could not be listed or read (network or server error, or the "
          "remote read budget was spent before the file was judged).",
          "Check the repository name, revision and token (HF_TOKEN), or scan with --deep to download the "
          "file whole."),
    _rule("HUB-01", "hub-verdict-disagrees", W, MED,
          "The Hub's own security scan and tensorsafe disagree about this file (--hub-verdicts).",
          "Look at both reports: the Hub scans imports with picklescan; tensorsafe also follows the "
          "containers and the calls. Trust neither blindly."),
    # --- identification: what a file is, or why it was not judged (unscanned, never clean) -----
    _rule("SCAN-01", "unscanned-format", E, HIGH,
          "The file's bytes match no format tensorsafe reads completely, so nothing in it was judged (unscanned, never clean).",
          "Convert the file to safetensors, or set `allow_unscanned = true` in the policy to let unknown non-model files through (never files named like models)."),
    _rule("SCAN-02", "model-name-mismatch", E, HIGH,
          "The file's name promises a model format, but its bytes are something else (an image, text, random bytes).",
          "Check where the file came from; a renamed file is how payloads hide. Download the model again."),
    _rule("SCAN-03", "git-lfs-pointer", E, HIGH,
          "The file is a Git LFS pointer, not the model: the model itself was never fetched, so it was not scanned.",
          "Fetch the real file (`git lfs pull`, or `lfs: true` in actions/checkout) and scan again."),
    _rule("SCAN-04", "nothing-to-scan", E, HIGH,
          "A path yields no files to scan, a folder cannot be listed, or a file named like a model is empty.",
          "Check the path; pass --allow-empty where an empty folder is expected."),
    _rule("ARC-06", "archive-not-opened", E, HIGH,
          "An archive or compression format tensorsafe does not open (7z, rar, an unsupported zip method, a missing optional decoder).",
          "Unpack the archive and scan its files, or install the optional decoder named in the message."),
    _rule("PK-S06", "pickle-framing-differential", F, HIGH,
          "The pickle's framing (protocol 4+ FRAME) makes CPython's unpicklers read different opcodes (C or Python, file or bytes).",
          "Loaders would disagree about what this stream does; treat the file as hostile."),
    # --- other model formats that can carry code ------------------------------------------------
    _rule("GGUF-01", "gguf-template-code", F, CRIT,
          "A GGUF chat template (Jinja) reaches Python internals (__class__, __globals__, __subclasses__, __import__, ...).",
          "Chat templates only format messages; a template that walks Python objects is an escape attempt. Do not load the file."),
    _rule("GGUF-02", "gguf-malformed", E, HIGH,
          "The GGUF header, metadata or tensor layout cannot be read as llama.cpp reads it (or a chat template is not valid Jinja).",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("TPL-01", "chat-template-code", F, CRIT,
          "A chat template in a tokenizer config or template file (Jinja) reaches Python internals (__class__, __globals__, ...).",
          "Chat templates only format messages; a template that walks Python objects is an escape attempt. Do not load the model."),
    _rule("TPL-02", "chat-template-unreadable", E, HIGH,
          "A chat template cannot be judged: not valid Jinja or UTF-8, too large, malformed, or jinja2 not installed.",
          "Loaders would not render it as written; fix the template, or install jinja2 (the `formats` extra)."),
    _rule("KERAS-01", "keras-code-layer", F, CRIT,
          "A Keras model holds code: a Lambda layer, a serialized Python function or bytecode, which loading runs.",
          "Load it only with safe_mode=True, or rebuild the layer in code you control."),
    _rule("KERAS-02", "keras-foreign-module", F, HIGH,
          "A Keras config names a module outside Keras (a custom class that loading imports).",
          "Allow the module only if you trust it and know what it runs at import."),
    _rule("KERAS-03", "keras-malformed", E, HIGH,
          "A Keras model's config cannot be read (missing or invalid config, or h5py not installed for HDF5).",
          "The file is corrupted, crafted, or needs `pip install h5py` to be read."),
    _rule("ONNX-01", "onnx-external-data-escape", F, HIGH,
          "An ONNX tensor's external data location is absolute or climbs out of the model's folder.",
          "Loading reads that file into the model; treat the file as hostile."),
    _rule("ONNX-02", "onnx-custom-domain", I, INF,
          "The ONNX graph uses operators from a custom domain, which need a custom operator library to run.",
          "Check that the operator library comes from a source you trust."),
    _rule("ONNX-03", "onnx-malformed", E, HIGH,
          "The ONNX protobuf cannot be parsed (or the onnx package is not installed).",
          "The file is corrupted, crafted, or needs `pip install onnx` to be read."),
    # --- safetensors header (ST-Fxx format errors, ST-Pxx policy findings, ST-Axx advisories) ----
    # (section owned by the header validator; see docs/safetensors.md)
    _rule("ST-F01", "st-file-too-small", E, HIGH,
          "The file is shorter than the 8-byte header length (reference: HeaderTooSmall).",
          "The file is truncated or not safetensors; download it again."),
    _rule("ST-F02", "st-header-too-large", E, HIGH,
          "The declared header length is over 100,000,000 bytes (reference: HeaderTooLarge).",
          "No safetensors reader accepts it; treat the file as hostile or corrupted."),
    _rule("ST-F03", "st-header-past-eof", E, HIGH,
          "The declared header runs past the end of the file (reference: InvalidHeaderLength).",
          "The file is truncated or its length field is forged; nothing was allocated for it."),
    _rule("ST-F04", "st-header-not-utf8", E, HIGH,
          "The header bytes are not valid UTF-8 (reference: InvalidHeader).",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F05", "st-header-not-json", E, HIGH,
          "The header is not exactly one JSON value in serde_json's grammar (syntax, NaN, lone surrogates, padding).",
          "Re-save the file with a safetensors writer; only JSON whitespace may surround the object."),
    _rule("ST-F06", "st-json-too-deep", E, HIGH,
          "The header JSON nests 128 levels or more (serde_json's recursion limit).",
          "No safetensors reader accepts it; treat the file as hostile."),
    _rule("ST-F07", "st-header-not-object", E, HIGH,
          "The header's top-level JSON value is not an object.",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F08", "st-duplicate-key", E, HIGH,
          "A JSON key appears twice in one object; readers disagree on which value wins (a parser differential).",
          "Remove the duplicate; treat a file that hides a second entry under the same name as hostile."),
    _rule("ST-F09", "st-bad-metadata", E, HIGH,
          "`__metadata__` is not an object of string values.",
          "Store metadata values as JSON strings."),
    _rule("ST-F10", "st-bad-tensor-entry", E, HIGH,
          "A tensor entry is not an object with `dtype`, `shape` and `data_offsets` (array form included).",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F11", "st-bad-dtype", E, HIGH,
          "A tensor's dtype is not one of the safetensors dtype names (as a plain JSON string).",
          "Newer dtypes need newer readers; a map-form dtype is a parser differential."),
    _rule("ST-F12", "st-bad-shape", E, HIGH,
          "A tensor's shape is not an array of integers in 0..2^64-1.",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F13", "st-bad-data-offsets", E, HIGH,
          "A tensor's data_offsets is not an array of exactly two integers in 0..2^64-1.",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F14", "st-size-overflow", E, HIGH,
          "Computing a tensor's byte size from its shape and dtype overflows 64 bits (reference: ValidationOverflow).",
          "The shape is absurd; treat the file as hostile."),
    _rule("ST-F15", "st-sub-byte-misaligned", E, HIGH,
          "A sub-byte dtype tensor (F4, F6) does not fill whole bytes (reference: MisalignedSlice).",
          "F4 needs an even element count, F6 a multiple of 4."),
    _rule("ST-F16", "st-offsets-not-contiguous", E, HIGH,
          "Tensor data ranges leave holes, overlap, share a range or run backwards (reference: InvalidOffset).",
          "Overlapping ranges let a small file claim the same bytes many times; treat the file as hostile."),
    _rule("ST-F17", "st-size-mismatch", E, HIGH,
          "A tensor's byte range does not match its shape and dtype (reference: TensorInvalidInfo).",
          "Re-save the file with a safetensors writer."),
    _rule("ST-F18", "st-data-not-covered", E, HIGH,
          "The tensors do not cover the data area exactly: truncated file or bytes after the last tensor.",
          "Appended bytes are a polyglot trick (a zip or a pickle); download or re-save the file."),
    _rule("ST-P01", "st-header-large", W, LOW,
          "The header is larger than the advisory size (Hugging Face Hub helpers refuse headers over 25,000,000 bytes).",
          "Nothing is wrong with the format; raise the `header_warn_bytes` limit to silence this."),
    _rule("ST-P02", "st-too-many-tensors", F, MED,
          "The file declares more tensor entries than the limit.",
          "Raise the `max_tensors` limit only for a file you trust."),
    _rule("ST-P03", "st-rank-too-high", F, MED,
          "A tensor has more dimensions than the limit.",
          "Raise the `max_rank` limit only for a file you trust (numpy stops at 64)."),
    _rule("ST-P04", "st-dimension-too-large", F, MED,
          "A tensor dimension, or the product of its non-zero dimensions, is over the limit (2^48-1 by default).",
          "Empty tensors with absurd shapes crash torch and numpy; raise `max_dim`/`max_elements` only if you trust the file."),
    _rule("ST-P05", "st-bad-tensor-name", F, HIGH,
          "A tensor name is empty, too long, holds control or invisible format characters, or looks like a path.",
          "Names are used as keys and sometimes as file names; treat path-like or invisible names as hostile."),
    _rule("ST-P06", "st-bad-metadata-entry", F, MED,
          "`__metadata__` has too many entries, a bad key, a NUL in a value, or is too large in total.",
          "Raise the metadata limits only for a file you trust."),
    _rule("ST-P07", "st-unusual-structure", F, MED,
          "The header nests deeper than tensor entries need, has unknown fields in a tensor entry, or a null `__metadata__`.",
          "Readers ignore such content, so it can carry data unseen; re-save the file with a safetensors writer."),
    _rule("ST-P08", "st-polyglot", F, HIGH,
          "The file is also a zip or tar archive, an HDF5 file or a pickle stream (a polyglot), so other loaders read something else.",
          "Treat the file as hostile; load it only with a safetensors reader, or re-save it."),
    _rule("ST-A01", "st-header-padding", I, INF,
          "The header has leading whitespace, padding other than spaces, or a length that is not a multiple of 8.",
          "Accepted by every reader; writers pad with spaces to 8 bytes."),
    _rule("ST-A02", "st-unaligned-tensor", I, INF,
          "A tensor's data does not start at a multiple of its element size; zero-copy loaders may need to copy.",
          "Re-save the file with a safetensors writer to align it."),
    _rule("ST-A03", "st-loader-support", I, INF,
          "Some Python loaders cannot materialise a tensor (F6 dtypes, F4 with an odd last dimension) or the file holds no tensors.",
          "Check that your loader supports these tensors."),
    _rule("ST-E01", "st-check-failed", E, HIGH,
          "A header check stopped on an unexpected error, so the file was not fully judged (fail closed).",
          "Report the file and the message to the tensorsafe maintainers; run with --debug for details."),
    _rule("ST-A04", "st-data-pickle-front", I, INF,
          "The file's first bytes also parse as a pickle that imports and calls nothing (pickle.load would return plain data).",
          "Harmless; ordinary safetensors writers produce such fronts now and then."),
    _rule("ST-D01", "st-non-finite-values", I, INF,
          "A float tensor holds NaN or infinite values (deep check).",
          "The format allows them; a model with such weights may not work."),
    _rule("ST-D02", "st-file-digest", I, INF,
          "The deep check read the whole file: its SHA-256 and a summary of the float tensors checked.",
          "Compare the digest with the one published for the file."),
]}


PICKLE_LIMIT_RULES = {"MAX_VALUES": "PK-L02"}
"""The rule of a pickle walk's limit error (other walk limits: PK-L01)."""
LIMIT_RULES = {"MAX_SCAN_SECONDS": "IO-02", "MAX_DECOMPRESSED_BYTES": "ARC-03", **PICKLE_LIMIT_RULES}
"""The rule a limit's error is reported under when a scan stops on it (other limits: PK-L01)."""


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
