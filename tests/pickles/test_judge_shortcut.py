"""``judge_trace`` returns at once for a trace with nothing to judge: that test must name every trace
field the judge reads, or a new check on another field would be skipped for such traces."""
import ast
import inspect

from tensorsafe.pickles import judge
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tensorsafe.pickles.walker import walk
from tensorsafe.report import Location
from tests import pickle_ops as op


def _trace_fields(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "trace"}


def test_the_shortcut_names_every_field_the_judge_reads():
    judged = _trace_fields(ast.parse(inspect.getsource(judge.TraceJudge)))
    shortcut = _trace_fields(ast.parse(inspect.getsource(judge.judge_trace)))
    assert judged - {"end", "truncated"} <= shortcut  # both are read only with ``error``, which it names


def test_a_trace_with_nothing_to_judge_gives_what_the_full_judge_gives():
    data = op.proto(2) + op.EMPTY_DICT + op.STOP
    trace = walk(data)
    full = judge.TraceJudge(DEFAULT_POLICY, "x.pkl", Location()).judge(trace)
    fast = judge.judge_trace(trace, DEFAULT_POLICY, "x.pkl", Location())
    assert (fast.findings, dict(fast.imports), dict(fast.tiers)) == (full.findings, dict(full.imports), dict(full.tiers))
