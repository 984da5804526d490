"""Pattern rewriter, pass registry, pipeline parsing, pass manager and translation validation."""
from __future__ import annotations

import importlib.metadata
import io
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from qirc.qir import passes as passes_mod
from qirc.qir.diagnostics import LoweringError, UsageError, VerifyError
from qirc.qir.ir import Module, const_op, input_op, output_op
from qirc.qir.passes import (ModulePass, PassCrashed, PassManager, all_passes, get_pass, parse_pipeline,
                             register_pass, register_pipeline, translation_validate)
from qirc.qir.rewriter import PatternsDidNotConverge, RewritePattern, Rewriter, apply_patterns
from qirc.qir.types import UniformQuantType, f32, i8, i32, tensor, u8
from qirc.qir.verifier import verify

Q8 = UniformQuantType.per_tensor(i8, 0.25, 0)


def relu_chain(n: int) -> Module:
    m = Module("chain")
    v = input_op(m, "x", tensor([4], f32))
    for i in range(n):
        v = m.create("onnx.Relu", [v], [tensor([4], f32)], loc=f"/relu{i}").result
    output_op(m, "y", v)
    return m


class FoldDoubleRelu(RewritePattern):
    """relu(relu(x)) -> relu(x)."""

    def match_and_rewrite(self, op, rewriter):
        if op.name == "onnx.Relu" and op.operands[0].owner.name == "onnx.Relu":
            rewriter.replace_op(op, [op.operands[0]])
            return True
        return False


class SubToAddNeg(RewritePattern):
    """a - b -> a + (b * -1): creates ops that the next pattern rewrites again."""

    def match_and_rewrite(self, op, rewriter):
        if op.name != "onnx.Sub":
            return False
        a, b = op.operands
        minus_one = rewriter.create_op("qir.const", [], [tensor([], f32)], {"value": np.array(-1, np.float32)})
        neg = rewriter.create_op("onnx.Mul", [b, minus_one.result], [b.type])
        add = rewriter.create_op("onnx.Add", [a, neg.result], [op.results[0].type])
        rewriter.replace_op(op, add)
        return True


class AddOfNegToSub(RewritePattern):
    """a + (b * -1) -> a - b: undoes SubToAddNeg, so the pair never converges."""

    def match_and_rewrite(self, op, rewriter):
        if op.name != "onnx.Add" or op.operands[1].owner.name != "onnx.Mul":
            return False
        mul = op.operands[1].owner
        sub = rewriter.create_op("onnx.Sub", [op.operands[0], mul.operands[0]], [op.results[0].type])
        rewriter.replace_op(op, sub)
        return True


class AddSelfToMulTwo(RewritePattern):
    """x + x -> x * 2."""

    def match_and_rewrite(self, op, rewriter):
        if op.name != "onnx.Add" or op.operands[0] is not op.operands[1]:
            return False
        two = rewriter.create_op("qir.const", [], [tensor([], f32)], {"value": np.array(2, np.float32)})
        rewriter.replace_op(op, rewriter.create_op("onnx.Mul", [op.operands[0], two.result], [op.results[0].type]))
        return True


# ----- rewriter ----------------------------------------------------------------------------------------------------
def test_apply_patterns_folds_a_chain():
    m = relu_chain(5)
    assert apply_patterns(m, [FoldDoubleRelu()]) == 4
    assert [o.name for o in m.ops()] == ["qir.input", "onnx.Relu", "qir.output"]
    assert m.walk("onnx.Relu")[0].loc == "/relu0"
    verify(m)


def test_apply_patterns_is_linear_on_a_20000_op_chain():
    m = relu_chain(20000)
    t0 = time.perf_counter()
    assert apply_patterns(m, [FoldDoubleRelu()]) == 19999
    elapsed = time.perf_counter() - t0
    assert len(m) == 3
    # a quadratic driver needs minutes here; the worklist needs well under a second
    assert elapsed < 10, elapsed


def test_created_ops_are_visited_and_get_the_rewritten_op_location():
    m = Module("t")
    x = input_op(m, "x", tensor([3], f32))
    s = m.create("onnx.Sub", [x, x], [tensor([3], f32)], loc="/sub").result
    d = m.create("onnx.Add", [s, s], [tensor([3], f32)], loc="/double").result
    output_op(m, "y", d)
    n = apply_patterns(m, [SubToAddNeg(), AddSelfToMulTwo()])
    assert n == 2
    names = [o.name for o in m.ops() if o.name.startswith("onnx.")]
    assert names.count("onnx.Sub") == 0 and names.count("onnx.Mul") == 2 and names.count("onnx.Add") == 1
    assert {o.loc for o in m.walk("onnx.Mul")} == {"/sub", "/double"}
    verify(m)


def test_non_converging_patterns_raise():
    m = Module("t")
    x = input_op(m, "x", tensor([3], f32))
    output_op(m, "y", m.create("onnx.Sub", [x, x], [tensor([3], f32)], loc="/sub").result)
    with pytest.raises(PatternsDidNotConverge, match="SubToAddNeg, AddOfNegToSub"):
        apply_patterns(m, [SubToAddNeg(), AddOfNegToSub()], max_rewrites=50)


def test_rewriter_records_changes():
    m = relu_chain(2)
    rw = Rewriter(m)
    assert not rw.changed
    second = m.walk("onnx.Relu")[1]
    assert FoldDoubleRelu().match_and_rewrite(m.walk("onnx.Relu")[0], rw) is False
    assert not rw.changed
    rw.replace_all_uses(second.result, second.operands[0])
    assert rw.changed
    rw.erase_op(second)
    assert len(m.walk("onnx.Relu")) == 1
    verify(m)


def test_apply_patterns_without_matches_changes_nothing():
    m = relu_chain(1)
    assert apply_patterns(m, [FoldDoubleRelu()]) == 0
    assert len(m) == 3


# ----- registry and pipelines --------------------------------------------------------------------------------------
class ScaleOutputs(ModulePass):
    """Test pass: multiply every float graph output by `factor`.

    Before: qir.output %y.  After: %s = onnx.Mul %y, const(factor); qir.output %s.
    Precondition: float outputs.
    """

    name = "test-scale-outputs"
    factor: float = 1.0
    enabled: bool = True
    repeat: int = 1
    tag: str = "none"

    def run(self, module):
        if not self.enabled:
            return
        for out in module.outputs:
            v = out.operands[0]
            for _ in range(self.repeat):
                c = const_op(module, np.array(self.factor, np.float32), tensor([], f32), loc="/scale")
                v = module.create("onnx.Mul", [v, c], [v.type], loc="/scale").result
            module.set_operand(out, 0, v)


class BreakShapes(ModulePass):
    """Test pass: give the first Relu a wrong result shape.

    Before: a well-formed Relu.  After: its result claims one more element.  Precondition: a Relu exists.
    """

    name = "test-break-shapes"

    def run(self, module):
        relu = module.walk("onnx.Relu")[0]
        relu.results[0].type = tensor([relu.results[0].type.shape[0] + 1], f32)


class Crash(ModulePass):
    """Test pass: fails with a bug (a bare exception).

    Before and after: nothing changes.  Precondition: none.
    """

    name = "test-crash"

    def run(self, module):
        raise KeyError("no such thing")


class Refuse(ModulePass):
    """Test pass: refuses with a located LoweringError.

    Before and after: nothing changes.  Precondition: none.
    """

    name = "test-refuse"

    def run(self, module):
        op = module.walk("onnx.Relu")[0]
        raise LoweringError("range and precision cannot both be met", loc=op.loc, op=op.name)


TEST_PASSES = (ScaleOutputs, BreakShapes, Crash, Refuse)


@pytest.fixture(autouse=True, scope="module")
def registered_test_passes():
    """Register this file's test passes only while its tests run, so no other test sees them."""
    for cls in TEST_PASSES:
        register_pass(cls)
    yield
    for name in [c.name for c in TEST_PASSES] + ["test-plugin-pass", "test-builtin-pass"]:
        passes_mod._PASSES.pop(name, None)
    passes_mod._PIPELINES.pop("test-two-scales", None)


def test_builtin_passes_are_registered_and_sorted():
    names = [c.name for c in all_passes()]
    assert {"dce", "verify", "test-scale-outputs"} <= set(names)
    assert names == sorted(names)
    assert get_pass("dce").summary().startswith("Erase ops whose results are unused")


def test_parse_pipeline_with_typed_options():
    ps = parse_pipeline(" dce , test-scale-outputs{factor=2.5, enabled=false repeat=3,tag=\"a b\"},verify ")
    assert [p.name for p in ps] == ["dce", "test-scale-outputs", "verify"]
    scale = ps[1]
    assert scale.factor == 2.5 and scale.enabled is False and scale.repeat == 3 and scale.tag == "a b"
    assert parse_pipeline("test-scale-outputs{enabled=1}")[0].enabled is True
    assert parse_pipeline("test-scale-outputs")[0].factor == 1.0
    assert parse_pipeline("") == []
    assert ScaleOutputs(factor=2, repeat=2).spec() == "test-scale-outputs{factor=2.0,repeat=2}"
    assert parse_pipeline(scale.spec())[0].option_values() == scale.option_values()


@pytest.mark.parametrize("text,fragments", [
    ("dcee", ["unknown pass 'dcee'", "did you mean 'dce'", "known passes:"]),
    ("test-scale-outputs{factr=2}", ["pass 'test-scale-outputs' has no option 'factr'", "did you mean 'factor'",
                                     "factor: float = 1.0"]),
    ("test-scale-outputs{enabled=maybe}", ["option 'enabled' expects 0, 1, true or false, got 'maybe'"]),
    ("test-scale-outputs{repeat=2.5}", ["option 'repeat' expects an integer, got '2.5'"]),
    ("test-scale-outputs{factor=big}", ["option 'factor' expects a number, got 'big'"]),
    ("test-scale-outputs{factor}", ["option 'factor' is not of the form key=value"]),
    ("dce,,verify", ["empty pass name"]),
    ("test-scale-outputs{factor=2", ["unclosed {"]),
    ("dce}", ["unmatched '}'"]),
])
def test_parse_pipeline_errors(text, fragments):
    with pytest.raises(UsageError) as info:
        parse_pipeline(text)
    for f in fragments:
        assert f in str(info.value), str(info.value)


def test_named_pipeline_expands_in_place():
    register_pipeline("test-two-scales", "test-scale-outputs{factor=2},dce", "scale then clean")
    ps = parse_pipeline("verify,test-two-scales")
    assert [p.spec() for p in ps] == ["verify", "test-scale-outputs{factor=2.0}", "dce"]


def test_register_pass_rejects_bad_classes():
    with pytest.raises(TypeError, match="no docstring"):
        @register_pass
        class NoDoc(ModulePass):
            name = "test-nodoc"

    with pytest.raises(TypeError, match="option 'things' must be bool, int, float or str"):
        @register_pass
        class BadOption(ModulePass):
            """Summary."""

            name = "test-bad-option"
            things: list = []

    with pytest.raises(ValueError, match="registered twice"):
        class Other(ModulePass):
            """Summary."""

            name = "dce"

        register_pass(Other)


def test_entry_point_plugins_and_builtin_modules_load_lazily(tmp_path, monkeypatch):
    (tmp_path / "qirc_test_plugin.py").write_text(textwrap.dedent('''
        from qirc.qir.passes import ModulePass

        class PluginPass(ModulePass):
            """A pass from an entry point."""
            name = "test-plugin-pass"
            def run(self, module):
                pass
    '''))
    (tmp_path / "qirc_test_builtin.py").write_text(textwrap.dedent('''
        from qirc.qir.passes import ModulePass, register_pass

        @register_pass
        class BuiltinPass(ModulePass):
            """A pass from a module imported by name."""
            name = "test-builtin-pass"
            def run(self, module):
                pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("plugin", "qirc_test_plugin:PluginPass", passes_mod.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == passes_mod.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(passes_mod, "BUILTIN_PASS_MODULES", ("qirc_test_builtin", "qirc_no_such_module"))
    monkeypatch.setattr(passes_mod, "_plugins_loaded", False)
    assert get_pass("test-plugin-pass").summary() == "A pass from an entry point."
    assert get_pass("test-builtin-pass").summary() == "A pass from a module imported by name."


def test_qir_does_not_import_other_qirc_packages():
    code = ("import sys, qirc.qir.passes, qirc.qir.verifier, qirc.qir.rewriter; "
            "print(sorted(m for m in sys.modules if m.startswith('qirc.') and not m.startswith('qirc.qir')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----- pass manager ------------------------------------------------------------------------------------------------
def small_float_module() -> Module:
    m = Module("t")
    x = input_op(m, "x", tensor([4], f32))
    r = m.create("onnx.Relu", [x], [tensor([4], f32)], loc="/relu").result
    output_op(m, "y", r)
    return m


def test_pass_manager_runs_passes_in_order():
    m = small_float_module()
    PassManager(parse_pipeline("test-scale-outputs{factor=3},test-scale-outputs{factor=2}"), out=io.StringIO()).run(m)
    factors = [float(o.operands[1].owner.attrs["value"]) for o in m.walk("onnx.Mul")]
    assert factors == [3.0, 2.0]


def test_verifier_failure_after_a_pass_names_the_pass():
    with pytest.raises(VerifyError) as info:
        PassManager([BreakShapes()], out=io.StringIO()).run(small_float_module())
    text = str(info.value)
    assert text.startswith("node '/relu' (onnx.Relu): after pass 'test-break-shapes': result 0 has shape 5"), text


def test_verify_each_off_lets_a_broken_module_through():
    m = PassManager([BreakShapes()], verify_each=False, out=io.StringIO()).run(small_float_module())
    assert m.walk("onnx.Relu")[0].results[0].type.shape == (5,)


def test_invalid_input_is_rejected_before_the_first_pass():
    m = small_float_module()
    m.walk("onnx.Relu")[0].attrs["bogus"] = 1
    with pytest.raises(VerifyError) as info:
        PassManager([ScaleOutputs()], out=io.StringIO()).run(m)
    assert "after pass" not in str(info.value) and "unknown attribute 'bogus'" in str(info.value)
    assert not m.walk("onnx.Mul")


def test_pass_errors_name_the_pass():
    with pytest.raises(LoweringError) as info:
        PassManager([Refuse()], out=io.StringIO()).run(small_float_module())
    assert str(info.value) == ("node '/relu' (onnx.Relu): in pass 'test-refuse': range and precision cannot both "
                               "be met")
    with pytest.raises(PassCrashed, match="pass 'test-crash' crashed: KeyError"):
        PassManager([Crash()], out=io.StringIO()).run(small_float_module())


def test_print_ir_and_time_passes():
    out = io.StringIO()
    PassManager([ScaleOutputs(factor=2), get_pass("dce")()], print_ir_before_all=True, print_ir_after_all=True,
                time_passes=True, out=out).run(small_float_module())
    text = out.getvalue()
    assert text.count("// -----// IR Dump Before test-scale-outputs //----- //") == 1
    assert text.count("// -----// IR Dump After dce //----- //") == 1
    after_scale = text.split("// -----// IR Dump After test-scale-outputs //----- //")[1]
    assert "onnx.Mul" in after_scale.split("// -----//")[0]
    assert "Pass execution timing report" in text
    rows = re.findall(r"^\s+(\d+\.\d{4}) \(\s*\d+\.\d%\)  (\S+)$", text, flags=re.M)
    assert [name for _, name in rows] == ["(verify)", "test-scale-outputs", "dce", "Total"]
    seconds = {name: float(s) for s, name in rows}
    assert seconds["Total"] >= seconds["(verify)"] + seconds["test-scale-outputs"] + seconds["dce"] - 2e-4


# ----- translation validation ------------------------------------------------------------------------------------
def quant_output_module(add_one: bool) -> Module:
    """x (f32) -> qcast (scale 0.25) [-> int.add 1] -> output (quantized)."""
    m = Module("t")
    x = input_op(m, "x", tensor([8], f32))
    q = m.create("quant.qcast", [x], [tensor([8], Q8)], loc="/q").result
    if add_one:
        one = const_op(m, np.array([1], np.int8), tensor([1], Q8))
        q = m.create("int.add", [q, one], [tensor([8], Q8)], loc="/plus").result
    output_op(m, "y", q)
    return m


def test_translation_validate_dequantizes_quantized_outputs():
    pytest.importorskip("qirc.qir.interpreter")
    same = translation_validate(quant_output_module(False), quant_output_module(False), seed=1, samples=2)
    assert same == [{"output": "y", "mode": "real", "max_abs_diff": 0.0, "max_step_diff": 0.0, "samples": 2}]
    shifted = translation_validate(quant_output_module(False), quant_output_module(True), seed=1, samples=2)
    # some inputs saturate at 127, where adding one step cannot show; elsewhere it is exactly one step
    assert shifted[0]["mode"] == "real"
    assert shifted[0]["max_abs_diff"] == pytest.approx(0.25)
    assert shifted[0]["max_step_diff"] == pytest.approx(1.0)


def test_translation_validate_compares_plain_integers_raw():
    pytest.importorskip("qirc.qir.interpreter")

    def acc_module(bias):
        m = Module("t")
        x = input_op(m, "x", tensor([2, 3], i32))
        b = const_op(m, np.array([bias, 0, 0], np.int32), tensor([3], i32))
        output_op(m, "acc", m.create("int.add", [x, b], [tensor([2, 3], i32)], loc="/acc").result)
        return m

    report = translation_validate(acc_module(0), acc_module(7), seed=0, samples=1)
    assert report == [{"output": "acc", "mode": "raw", "max_abs_diff": 7.0, "max_step_diff": None, "samples": 1}]


def test_translation_validate_carries_inputs_across_a_retyped_input():
    pytest.importorskip("qirc.qir.interpreter")
    unsigned = UniformQuantType.per_tensor(u8, 0.1, 128)
    signed = UniformQuantType.per_tensor(i8, 0.1, 0)

    def dequant_module(elem):
        m = Module("t")
        x = input_op(m, "x", tensor([16], elem))
        output_op(m, "y", m.create("quant.dcast", [x], [tensor([16], f32)], loc="/dq").result)
        return m

    report = translation_validate(dequant_module(unsigned), dequant_module(signed), seed=3, samples=2)
    assert report[0]["max_abs_diff"] == 0.0


def test_validate_each_reports_per_pass():
    pytest.importorskip("qirc.qir.interpreter")
    out = io.StringIO()
    pm = PassManager([get_pass("dce")(), ScaleOutputs(factor=2.0)], validate_each=True, validate_samples=2, out=out)
    pm.run(small_float_module())
    (name0, rep0), (name1, rep1) = pm.validation
    assert (name0, rep0[0]["max_abs_diff"]) == ("dce", 0.0)
    assert name1 == "test-scale-outputs" and rep1[0]["max_abs_diff"] > 0 and rep1[0]["mode"] == "real"
    assert "// validate dce: output 'y': max |diff| 0 over 2 sample(s)" in out.getvalue()


def test_translation_validate_carries_the_input_quantizer_rounding_exactly(monkeypatch):
    interp = pytest.importorskip("qirc.qir.interpreter")
    # inputs exactly on rounding ties with an odd zero point: add_round and round_add differ by one step there
    qt = UniformQuantType.per_tensor(u8, 0.5, 101)
    ties = (np.arange(-6, 6, dtype=np.float32) + np.float32(0.5)) * np.float32(0.5)
    monkeypatch.setattr(interp, "random_inputs", lambda module, seed=0: {"x": ties.copy()})

    before = Module("t")
    x = input_op(before, "x", tensor([12], f32))
    q = before.create("quant.qcast", [x], [tensor([12], qt)], {"rounding": "add_round"}, loc="/q").result
    output_op(before, "y", before.create("quant.dcast", [q], [tensor([12], f32)], loc="/dq").result)
    after = Module("t")  # what stripping the input quantizer leaves: a quantized graph input
    xq = input_op(after, "x", tensor([12], qt))
    output_op(after, "y", after.create("quant.dcast", [xq], [tensor([12], f32)], loc="/dq").result)

    assert translation_validate(before, after, samples=1)[0]["max_abs_diff"] == 0.0
