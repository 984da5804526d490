"""Malformed text gives ParseError with file, line and column and a one-line message; never another exception."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qirc.qir.diagnostics import ParseError, QircError
from qirc.qir.parser import parse_module, parse_type
from qirc.qir.printer import print_module

from strategies import modules

# QIRC_FUZZ_EXAMPLES=5000 pytest tests/test_parser_errors.py runs a much longer search.
SETTINGS = settings(max_examples=int(os.environ.get("QIRC_FUZZ_EXAMPLES", 200)), deadline=timedelta(seconds=5),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HEADER = "qir.module @m {\n"
X = '  %x = qir.input "x" : tensor<2xi8>\n'


def parse_error(text, filename="model.qir") -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_module(text, filename)
    return info.value


def check_error(e: ParseError):
    assert isinstance(e, QircError)
    assert e.line is not None and e.line >= 1
    assert e.column is not None and e.column >= 1
    assert "\n" not in str(e)


@pytest.mark.parametrize("text,line,column,message", [
    # undefined value / use before definition / duplicate definition
    (HEADER + X + "  %y = int.add %x, %z : tensor<2xi8>\n}\n", 3, 20,
     "undefined value %z (a value must be defined above its use)"),
    (HEADER + "  %y = int.add %x, %x : tensor<2xi8>\n" + X + "}\n", 2, 16, "undefined value %x"),
    (HEADER + X + '  %x = qir.input "x2" : tensor<2xi8>\n}\n', 3, 3, "value %x is defined twice (first at line 2)"),
    # unknown op, operand and result counts
    (HEADER + X + "  %y = int.frobnicate %x : tensor<2xi8>\n}\n", 3, 8, "unknown op 'int.frobnicate'"),
    (HEADER + X + "  %y = int.add %x : tensor<2xi8>\n}\n", 3, 8, "int.add takes 2 operand(s), got 1"),
    (HEADER + X + "  %y = int.conv %x, %x, %x, %x {kernel_shape = [1], pads = [0, 0], strides = [1], "
     "dilations = [1]} : tensor<2xi8>\n}\n", 3, 8, "int.conv takes 2 to 3 operands, got 4"),
    (HEADER + X + "  %y, %z = int.add %x, %x : tensor<2xi8>, tensor<2xi8>\n}\n", 3, 12,
     "int.add has 1 result(s), got 2"),
    (HEADER + X + "  %y = int.add %x, %x\n}\n", 3, 8, "int.add has 1 result(s) but 0 result type(s)"),
    # attributes: unknown, wrong kind, repeated, not a choice
    (HEADER + X + "  %y = int.clip %x {min = 0, maxx = 3} : tensor<2xi8>\n}\n", 3, 30,
     "int.clip has no attribute 'maxx' (declared: max, min)"),
    (HEADER + X + "  %y = int.clip %x {min = 0.5, max = 3} : tensor<2xi8>\n}\n", 3, 27,
     "attribute 'min' of int.clip must be an int, found a float"),
    (HEADER + X + '  %y = int.reshape %x {shape = [1, 2.0]} : tensor<2xi8>\n}\n', 3, 32,
     "attribute 'shape' of int.reshape must be a list of ints, found a list with a non-integer element"),
    (HEADER + X + '  %y = int.reshape %x {shape = "2"} : tensor<2xi8>\n}\n', 3, 32,
     "attribute 'shape' of int.reshape must be a list of ints, found a string"),
    (HEADER + X + "  %y = int.requant_shift %x {mul = 3, add = 0, div = 1} : tensor<2xi8>\n}\n", 3, 36,
     "attribute 'mul' of int.requant_shift must be a dense array, found an int"),
    (HEADER + X + "  %y = int.clip %x {min = 0, min = 1, max = 3} : tensor<2xi8>\n}\n", 3, 30,
     "attribute 'min' given twice"),
    (HEADER + "  %f = qir.input \"f\" : tensor<2xf32>\n"
     '  %y = quant.qcast %f {rounding = "nearest"} : tensor<2x!quant.uniform<i8:f32, 0.5:0>>\n}\n', 3, 35,
     "attribute 'rounding' of quant.qcast must be one of 'round_add', 'add_round', found 'nearest'"),
    # malformed attribute dictionaries: the error points inside the braces
    (HEADER + X + "  %y = int.clip %x {min = , max = 3} : tensor<2xi8>\n}\n", 3, 27,
     "expected an attribute value (int, float, true/false, string, [list], dense<...> : tensor<...> or a type) "
     "in attribute dictionary, found ','"),
    (HEADER + X + "  %y = int.clip %x {min 0, max = 3} : tensor<2xi8>\n}\n", 3, 25,
     "expected '=' after the attribute name in attribute dictionary, found '0'"),
    (HEADER + X + "  %y = int.clip %x {min = 0 max = 3} : tensor<2xi8>\n}\n", 3, 29,
     "expected ',' or '}' in attribute dictionary, found 'm'"),
    (HEADER + X + "  %y = int.clip %x {= 0} : tensor<2xi8>\n}\n", 3, 21,
     "expected an attribute name in attribute dictionary, found '='"),
    (HEADER + X + "  %y = int.clip %x {min = 0, max = 3 : tensor<2xi8>\n}\n", 3, 38,
     "expected ',' or '}' in attribute dictionary, found ':'"),
    (HEADER + X + "  %y = int.requant_shift %x {mul = dense<[1]>, add = dense<[1]> : tensor<1xi64>, div = 1} "
     ": tensor<2xi8>\n}\n", 3, 46, "expected ': tensor<...>' after the dense literal in attribute dictionary, found ','"),
    (HEADER + X + "  %y = qirtest_none.none %x\n}\n", 3, 8, "unknown op 'qirtest_none.none'"),
    # types
    (HEADER + '  %x = qir.input "x" : tensor<2xf31>\n}\n', 2, 24, "bad type 'tensor<2xf31>': unknown element type 'f31'"),
    (HEADER + '  %x = qir.input "x" : tensor<2x!quant.uniform<i8:f32, 0.5>>\n}\n', 2, 24,
     "expected scale:zero_point, found '0.5'"),
    (HEADER + '  %x = qir.input "x" : tensor<2x!quant.uniform<f32:f32, 0.5:0>>\n}\n', 2, 24,
     "quant storage type must be an integer type"),
    (HEADER + '  %x = qir.input "x" : tensor<2x!quant.uniform<i8:f32:0, 0.5:0>>\n}\n', 2, 24,
     "per-axis parameters must be {scale:zero_point, ...}"),
    # dense literals
    (HEADER + '  %c = qir.const dense<"0x0102"> : tensor<3xi8>\n}\n', 2, 18,
     "dense literal has 2 bytes but tensor<3xi8> needs 3"),
    (HEADER + '  %c = qir.const dense<"0x01G2"> : tensor<2xi8>\n}\n', 2, 18,
     'a dense hex literal is "0x" followed by hex digits'),
    (HEADER + "  %c = qir.const dense<[1, 2]> : tensor<3xi8>\n}\n", 2, 18,
     "dense literal has 2 elements but tensor<3xi8> has 3"),
    (HEADER + "  %c = qir.const dense<[1, 200]> : tensor<2xi8>\n}\n", 2, 18, "200 does not fit i8"),
    (HEADER + "  %c = qir.const dense<[1, 2]> : tensor<2xf32>\n}\n", 2, 34,
     "an integer list literal needs an integer element type, not f32"),
    (HEADER + '  %c = qir.const dense<"0x0102"> : tensor<2xi1>\n}\n', 2, 18,
     "a dense i1 literal may hold only the bytes 0 and 1"),
    (HEADER + "  %c = qir.const dense_resource<__elided__> : tensor<32xi8>\n}\n", 2, 18,
     "constant elided; cannot parse an --elide-constants dump"),
    (HEADER + X + "  %y = int.add %x, %x dense<[1]> : tensor<2xi8>\n}\n", 3, 23, "unexpected 'dense<[1]>'"),
    (HEADER + X + '  %y = int.add "n" %x, %x : tensor<2xi8>\n}\n', 3, 16, "int.add takes no leading name string"),
    # strings
    (HEADER + '  %x = qir.input "a\\qb" : tensor<2xi8>\n}\n', 2, 18, "bad string literal: Invalid \\escape"),
    # syntax
    ("qir.modul @m {\n}\n", 1, 1, "expected 'qir.module', found 'qir.modul'"),
    (HEADER + X + "  %y = int.add %x %x : tensor<2xi8>\n}\n", 3, 8, "int.add takes 2 operand(s), got 1"),
    (HEADER + X, 3, 1, "unexpected end of input; expected one of ',', '}', a %value, an op name, loc(...)"),
    (HEADER + X + "}\n}\n", 4, 1, "unexpected '}'; expected end of input"),
    ("", 1, 1, "unexpected end of input; expected an op name"),
    (HEADER + "  %x = qir.input \"x\" : tensor<2xi8> ^\n}\n", 2, 37, "unexpected character '^'"),
])
def test_error_position_and_message(text, line, column, message):
    e = parse_error(text)
    check_error(e)
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.message, str(e)
    assert str(e).startswith(f"model.qir:{line}:{column}: ")


def test_integer_too_long_is_a_parse_error():
    e = parse_error(HEADER + X + "  %y = int.clip %x {min = 0, max = " + "9" * 5000 + "} : tensor<2xi8>\n}\n")
    check_error(e)
    assert "too long" in e.message


def test_invalid_utf8():
    e = parse_error(b"qir.module @m {\n  \xff\n}\n")
    check_error(e)
    assert (e.line, e.column, e.message) == (2, 3, "input is not valid UTF-8")


def test_parse_type_errors():
    with pytest.raises(ParseError, match="bad type 'tensor<3xq8>'"):
        parse_type("tensor<3xq8>")
    with pytest.raises(ParseError, match="expected tensor"):
        parse_type("vector<3xf32>")


def test_parser_state_is_clean_after_an_error():
    parse_error(HEADER + X + "  %y = int.add %x, %nope : tensor<2xi8>\n}\n")
    m = parse_module(HEADER + X + '  qir.output "y" %x\n}\n')
    assert [op.name for op in m.ops()] == ["qir.input", "qir.output"]


# ----- properties: random junk and damaged text ----------------------------------------------------------------------
def parse_or_parse_error(text):
    """Parsing either succeeds or raises a located, one-line ParseError; anything else fails the test."""
    try:
        parse_module(text, "fuzz.qir")
    except ParseError as e:
        check_error(e)
        assert str(e).startswith(f"fuzz.qir:{e.line}:{e.column}: ")


@given(st.binary(max_size=400))
@SETTINGS
def test_random_bytes(data):
    parse_or_parse_error(data)


@given(st.text(alphabet='qir.module@{}%=,:<>[]()"\\0123456789xfi-+.e \n\tabcdensloc_!uqt', max_size=300))
@SETTINGS
def test_random_text_from_the_grammar_alphabet(text):
    parse_or_parse_error(text)


_PALETTE = st.sampled_from(list('%@{}[]()<>=,:"\\.-+x0123456789 \n\tedfi!') +
                           ["dense<", "tensor<", "loc(", "qir.const", "int.add", "%0", "!quant.uniform<", "\x00", "é"])


@st.composite
def mutated_texts(draw):
    text = print_module(draw(modules(max_ops=6)))
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        kind = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate_line", "swap_lines"]))
        i = draw(st.integers(0, n))
        if kind == "delete":
            j = draw(st.integers(i, min(n, i + 8)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(_PALETTE) + text[i:]
        elif kind == "replace" and i < n:
            text = text[:i] + draw(_PALETTE) + text[i + 1:]
        elif kind == "truncate":
            text = text[:i]
        else:
            lines = text.split("\n")
            a = draw(st.integers(0, len(lines) - 1))
            b = draw(st.integers(0, len(lines) - 1))
            if kind == "duplicate_line":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


@given(mutated_texts())
@SETTINGS
def test_mutated_text(text):
    parse_or_parse_error(text)


@given(modules(max_ops=6), st.data())
@SETTINGS
def test_every_truncation_of_valid_text_is_located(module, data):
    text = print_module(module)
    cut = data.draw(st.integers(0, len(text) - 3))  # keeps at least "}" out: the text is incomplete
    with pytest.raises(ParseError) as info:
        parse_module(text[:cut], "cut.qir")
    check_error(info.value)
    assert info.value.line <= text[:cut].count("\n") + 1


def test_same_value_defined_twice_by_one_op():
    from qirc.qir.ops import DIALECTS, OPS, dialect
    dialect("qirtest_dup", "test only").op("split", "any number of results", operands=["x"], results=("y*",))
    try:
        e = parse_error(HEADER + X + "  %a, %a = qirtest_dup.split %x : tensor<1xi8>, tensor<1xi8>\n}\n")
        assert (e.line, e.column, e.message) == (3, 7, "value %a is defined twice by the same op")
    finally:
        OPS.pop("qirtest_dup.split", None)
        DIALECTS.pop("qirtest_dup", None)
