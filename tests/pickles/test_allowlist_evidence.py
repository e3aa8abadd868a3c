"""The false positives real users hit (issue 11 §4), written by the real libraries, stay clean.

Every file here is written with ``pickle.dumps`` / ``torch.save`` of real objects (writing, never
loading), so the test follows whatever the installed versions write. The allowlist entries they need
name their source and what unpickling them runs (tensorsafe/pickles/policy.py).
"""
from __future__ import annotations

import pickle
import random

import pytest

from tests import pickle_ops as op
from tests.conftest import rule_ids

np = pytest.importorskip("numpy")
NEWTRUE = b"\x88"


def _clean(report) -> None:
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.verdict == "clean", [str(f) for f in report.findings]


# -- numpy random generators (numpy 2.x names the bit generator class) -----------------------------
def _generators() -> dict[str, object]:
    rnd = np.random
    return {
        "default_rng": rnd.default_rng(0), "RandomState": rnd.RandomState(0), "PCG64": rnd.PCG64(),
        "PCG64DXSM": rnd.PCG64DXSM(), "Philox": rnd.Philox(), "SFC64": rnd.SFC64(), "MT19937": rnd.MT19937(),
        "SeedSequence": rnd.SeedSequence(1), "Generator-Philox": rnd.Generator(rnd.Philox(1)),
        "spawned": rnd.default_rng(0).spawn(2), "legacy-state": rnd.get_state(),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("name", sorted(_generators()))
def test_numpy_random_generator_pickles_are_clean(scan_bytes, name, protocol):
    report = scan_bytes(pickle.dumps(_generators()[name], protocol=protocol), name=f"{name}.pkl")
    _clean(report)
    assert not report.findings, [str(f) for f in report.findings]


# -- transformers training_args.bin --------------------------------------------------------------
@pytest.fixture(scope="module")
def training_args(tmp_path_factory):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("training_args")
    args = transformers.TrainingArguments(output_dir=str(folder / "out"))
    path = folder / "training_args.bin"
    torch.save(args, path)
    return path, pickle.dumps(args, protocol=2)


def test_training_args_bin_is_clean(training_args):
    import tensorsafe

    path, _ = training_args
    report = tensorsafe.scan(path)
    _clean(report)
    assert rule_ids(report) <= {"PK-I03"}
    triggers = {f.trigger for f in report.findings}
    assert {"transformers.trainer_pt_utils.AcceleratorConfig", "accelerate.state.PartialState"} <= triggers


@pytest.mark.parametrize("cls", ["transformers.trainer_pt_utils AcceleratorConfig", "accelerate.state PartialState"])
def test_training_args_class_called_with_arguments_fails(scan_bytes, training_args, cls):
    """The same file, with the class's NEWOBJ() turned into a REDUCE call with an argument."""
    _, data = training_args
    import_ = b"c" + cls.replace(" ", "\n").encode() + b"\n"
    start = data.index(import_) + len(import_)
    memo = data[start:start + 2]
    assert memo[:1] == b"q" and data[start + 2:start + 4] == op.EMPTY_TUPLE + op.NEWOBJ
    doctored = data[:start] + memo + NEWTRUE + op.TUPLE1 + op.REDUCE + data[start + 4:]
    report = scan_bytes(doctored, name="training_args.bin")
    assert report.exit_code == 1
    assert "PK-C02" in rule_ids(report), [str(f) for f in report.findings]


def test_accelerator_config_called_through_newobj_with_arguments_fails(scan_bytes):
    cls = op.global_("transformers.trainer_pt_utils", "AcceleratorConfig")
    data = op.proto(2) + cls + NEWTRUE + op.TUPLE1 + op.NEWOBJ + op.EMPTY_DICT + op.BUILD + op.STOP
    report = scan_bytes(data)
    assert report.exit_code == 1 and "PK-C02" in rule_ids(report)


# -- optimizer, scheduler, scaler and RNG states ----------------------------------------------------
@pytest.fixture(scope="module")
def training_states():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    states = {
        "optimizer.pt": opt.state_dict(),
        "scheduler.pt": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10).state_dict(),
        "step_scheduler.pt": torch.optim.lr_scheduler.StepLR(opt, step_size=3).state_dict(),
        "scaler.pt": torch.amp.GradScaler("cpu").state_dict(),
        "rng_state.pth": {"python": random.getstate(), "numpy": np.random.get_state(),
                          "cpu": torch.get_rng_state()},
    }
    return torch, states


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "step_scheduler.pt", "scaler.pt", "rng_state.pth"])
def test_training_states_are_clean(tmp_path, training_states, name):
    import tensorsafe

    torch, states = training_states
    path = tmp_path / name
    torch.save(states[name], path)
    report = tensorsafe.scan(path)
    _clean(report)
    assert not report.findings, [str(f) for f in report.findings]
