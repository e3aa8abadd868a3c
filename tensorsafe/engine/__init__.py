"""The scan engine: spans, recursion through containers, findings per span (:mod:`.scanner`).

Named ``engine`` rather than ``scan`` so that importing it never rebinds the public verb
:func:`tensorsafe.scan`. It knows local files and byte buffers only; ``hf://`` URLs are told apart in
:mod:`tensorsafe.api`."""
