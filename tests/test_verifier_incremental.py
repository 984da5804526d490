"""Incremental verification between passes: the pass manager checks only the ops a pass changed, and still stops at
the first broken rule with the error a full verification gives."""
from __future__ import annotations

import io

import numpy as np
import pytest

from qirc.qir import verifier
from qirc.qir.diagnostics import VerifyError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.passes import ModulePass, PassManager
from qirc.qir.types import UniformQuantType, f32, i8, tensor

N = 200  # ops in the chain; the passes below break one in the middle


def relu_chain() -> Module:
    m = Module("chain")
    v = input_op(m, "x", tensor([4], f32))
    for i in range(N):
        v = m.create("onnx.Relu", [v], [tensor([4], f32)], loc=f"/relu{i}").result
    output_op(m, "y", v)
    return m


def relu(m: Module, i: int):
    return next(op for op in m.ops() if op.loc == f"/relu{i}")


class Nothing(ModulePass):
    """Change nothing."""

    name = "test-nothing"

    def run(self, module):
        pass


class Mutate(ModulePass):
    """Apply `self.change` to the module (one op broken, bypassing or using the Module API)."""

    name = "test-mutate"

    def __init__(self, change):
        super().__init__()
        self.change = change

    def run(self, module):
        self.change(module)


def bad_attribute(m):
    relu(m, 120).attrs["bogus"] = 1


def bad_result_type(m):
    relu(m, 120).results[0].type = tensor([5], f32)


def bad_input_type(m):
    # the qir.input stays valid with any tensor type; its user, /relu0, now maps 5 elements to 4
    m.inputs[0].results[0].type = tensor([5], f32)


def operand_set_around_the_module(m):
    op = relu(m, 120)
    op.operands[0] = relu(m, 10).results[0]


def new_op_of_the_wrong_shape(m):
    op = relu(m, 120)
    wrong = m.create("onnx.Relu", [op.operands[0]], [tensor([3], f32)], loc="/inserted")
    m.set_operand(op, 0, wrong.results[0])


def operand_set_through_the_module(m):
    # a valid op of another shape takes /relu120's place as its operand: /relu120's own rule breaks
    x = m.inputs[0].results[0]
    other = m.create("onnx.Reshape", [x], [tensor([2, 2], f32)], {"shape": [2, 2]}, loc="/reshape")
    m.set_operand(relu(m, 120), 0, other.results[0])


def self_loop(m):
    op = relu(m, 120)
    m.set_operand(op, 0, op.results[0])


BREAKAGES = {
    bad_attribute: ("/relu120", "unknown attribute 'bogus'"),
    bad_result_type: ("/relu120", "result 0 has shape 5"),
    bad_input_type: ("/relu0", "result 0 has shape 4 but onnx.Relu of operand shapes (5) gives 5"),
    operand_set_around_the_module: ("/relu120", "is not linked in the module graph"),
    new_op_of_the_wrong_shape: ("/inserted", "result 0 has shape 3"),
    operand_set_through_the_module: ("/relu120", "result 0 has shape 4 but onnx.Relu of operand shapes (2x2)"),
    self_loop: ("/relu120", "ops form a cycle: onnx.Relu (/relu120) -> onnx.Relu (/relu120)"),
}


@pytest.mark.parametrize("change", list(BREAKAGES), ids=lambda f: f.__name__)
def test_a_pass_breaking_one_op_is_caught_after_that_pass(change):
    where, what = BREAKAGES[change]
    m = relu_chain()
    with pytest.raises(VerifyError) as info:
        PassManager([Nothing(), Mutate(change), Nothing()], out=io.StringIO()).run(m)
    text = str(info.value)
    assert text.startswith(f"node '{where}' (onnx."), text
    assert "after pass 'test-mutate'" in text and what in text, text
    # the same error as a full verification of every op
    m = relu_chain()
    with pytest.raises(VerifyError) as full:
        PassManager([Nothing(), Mutate(change), Nothing()], out=io.StringIO(), verify_full=True).run(m)
    assert str(full.value) == text


def test_only_changed_ops_are_checked_again(monkeypatch):
    checked = []
    original = verifier.verify_op
    monkeypatch.setattr(verifier, "verify_op", lambda op: (checked.append(op.loc), original(op))[1])

    def touch(m):
        op = relu(m, 50)
        op.attrs["bogus"] = 1
        del op.attrs["bogus"]  # back to the very same attributes: nothing to check again

    def reroute(m):
        m.set_operand(relu(m, 150), 0, m.inputs[0].results[0])
        m.erase_dead()  # relu0..relu149 lose their only use and go

    m = relu_chain()
    passes = [Nothing(), Mutate(touch), Mutate(reroute)]
    PassManager(passes, out=io.StringIO()).run(m)
    assert checked == ["x"] + [f"/relu{i}" for i in range(N)] + ["y", "/relu150"]
    assert len(m) == 2 + N - 150
    # a later manager on the same module starts from what passed: only what its pass changes is checked
    checked.clear()
    with pytest.raises(VerifyError, match="node '/relu199'.*unknown attribute 'bogus'"):
        PassManager([Mutate(lambda mod: relu(mod, 199).attrs.update(bogus=1))], out=io.StringIO()).run(m)
    assert checked == ["/relu199"]


def test_an_array_attribute_changed_in_place_needs_a_full_verification():
    """The documented limit: attribute values count as immutable; verify_full (and verify(module)) see them."""
    narrow = UniformQuantType.per_tensor(i8, 0.5, 0, storage_min=-127, storage_max=127)

    def build():
        m = Module("c")
        x = input_op(m, "x", tensor([4], narrow))
        w = const_op(m, np.array([1, 2, 3, 4], np.int8), tensor([4], narrow), loc="/w")
        s = m.create("int.add", [x, w], [tensor([4], narrow)], loc="/add").result
        output_op(m, "y", s)
        return m

    def poke(m):
        m.walk("qir.const")[0].attrs["value"][0] = -128  # in place: the same array object

    with pytest.raises(VerifyError) as info:
        PassManager([Mutate(poke)], out=io.StringIO(), verify_full=True).run(build())
    assert str(info.value).startswith("node '/w' (qir.const): after pass 'test-mutate': values -128..4 exceed")
    m = build()
    PassManager([Mutate(poke)], out=io.StringIO()).run(m)
    with pytest.raises(VerifyError, match="values -128..4 exceed the storage range"):
        verifier.verify(m)
