"""Read the textual form (see `qirc.qir.printer` and docs/ir.md) back into a `Module`.

The grammar is `qir.lark`, LALR(1).  lark compiles it into a parse table and wraps the `_ModuleBuilder` callbacks;
`_LalrDriver` runs that table with a contextual lexer of its own (one regex per parser state), and the callbacks
create each op with `Module.create` as soon as its line is reduced: one pass, O(1) work per op, no parse tree.
Literals and whole attribute dictionaries are single tokens of the grammar, read inside by the same terminal
definitions, which keeps the token count (the cost) per op low: 50,000 ops parse in a few seconds.

Every op is checked against its declaration (`get_op_def`): operand and result counts, attribute names, kinds and
choices.  Types, shapes and quantization rules are the verifier's business, not the parser's.

Every malformed input raises `ParseError` with the file, line and column and a one-line message.
"""
from __future__ import annotations

import gc
import json
import re
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from lark import Lark, Transformer
from lark.parsers.lalr_analysis import Shift

from .diagnostics import ParseError
from .ir import Module, Value
from .ops import OPS, AttrDef, load_dialects
from .printer import NAME_SUGAR_OPS, VALUE_SUGAR_OPS
from .types import ScalarType, TensorType, UniformQuantType, _SCALARS

__all__ = ["parse_module", "parse_type", "parse_element_type", "GRAMMAR_PATH", "grammar_text"]

GRAMMAR_PATH = Path(__file__).with_name("qir.lark")

ELIDED_MESSAGE = "constant elided; cannot parse an --elide-constants dump"


def grammar_text() -> str:
    return GRAMMAR_PATH.read_text(encoding="utf-8")


# ----- types -----------------------------------------------------------------------------------------------------
class _TypeSyntaxError(Exception):
    """A problem in a type's text; the caller turns it into a located ParseError."""


_INT = r"[-+]?[0-9]+"
_FLOAT = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|inf|nan)"
_TENSOR_RE = re.compile(r"tensor<((?:[0-9]+x)*)(.*)>", re.S)
_QUANT_RE = re.compile(
    r"!quant\.uniform<\s*([a-z][0-9]+)(?:<\s*(" + _INT + r")\s*:\s*(" + _INT + r")\s*>)?"
    r"\s*:\s*([a-z][0-9]+)\s*(?::\s*(" + _INT + r")\s*)?,\s*(.*?)\s*>", re.S)
_PARAM_RE = re.compile(r"\s*(" + _FLOAT + r")\s*:\s*(" + _INT + r")\s*", re.S)
_MAX_DIGITS = 1000  # Python refuses to convert very long digit strings; such a literal is malformed anyway

# Types and lists repeat all over a module: read each distinct spelling once.
_type_cache: Dict[str, TensorType] = {}
_list_cache: Dict[str, tuple] = {}


def _int(text: str) -> int:
    if len(text) > _MAX_DIGITS:
        raise _TypeSyntaxError(f"integer literal of {len(text)} digits is too long")
    return int(text)


def _scalar(name: str) -> ScalarType:
    if name not in _SCALARS:
        raise _TypeSyntaxError(f"unknown element type '{name}'")
    return ScalarType(name)


def _quant(text: str) -> UniformQuantType:
    m = _QUANT_RE.fullmatch(text)
    if m is None:
        raise _TypeSyntaxError("expected !quant.uniform<storage[<min:max>]:expressed[:axis], scale:zero_point> or "
                               "{scale:zero_point, ...} per axis")
    storage_name, lo, hi, expressed_name, axis, params = m.groups()
    storage, expressed = _scalar(storage_name), _scalar(expressed_name)
    if not storage.is_int:
        raise _TypeSyntaxError(f"quant storage type must be an integer type, not {storage}")
    if not expressed.is_float:
        raise _TypeSyntaxError(f"quant expressed type must be a float type, not {expressed}")
    if axis is None:
        p = _PARAM_RE.fullmatch(params)
        if p is None:
            raise _TypeSyntaxError(f"expected scale:zero_point, found '{_clip(params)}'")
        pairs = [p.groups()]
    else:
        if not (params.startswith("{") and params.endswith("}")):
            raise _TypeSyntaxError(f"per-axis parameters must be {{scale:zero_point, ...}}, found '{_clip(params)}'")
        inner = params[1:-1]
        pairs = []
        if inner.strip():
            for item in inner.split(","):
                p = _PARAM_RE.fullmatch(item)
                if p is None:
                    raise _TypeSyntaxError(f"expected scale:zero_point, found '{_clip(item.strip())}'")
                pairs.append(p.groups())
    scales = tuple(float(s) for s, _ in pairs)
    zero_points = tuple(_int(z) for _, z in pairs)
    return UniformQuantType(storage, scales, zero_points, None if axis is None else _int(axis),
                            None if lo is None else _int(lo), None if hi is None else _int(hi), expressed)


def parse_element_type(text: str):
    """`f32`, `i8`, ... or `!quant.uniform<...>`."""
    if text.startswith("!quant.uniform<"):
        return _quant(text)
    return _scalar(text)


def _tensor(text: str) -> TensorType:
    t = _type_cache.get(text)
    if t is not None:
        return t
    m = _TENSOR_RE.fullmatch(text)
    if m is None:
        raise _TypeSyntaxError("expected tensor<DxDx...xelement>")
    dims, element = m.groups()
    shape = tuple(_int(d) for d in dims.split("x")[:-1])
    t = TensorType(shape, parse_element_type(element))
    if len(_type_cache) < 100_000:
        _type_cache[text] = t
    return t


def parse_type(text: str) -> TensorType:
    """Parse a tensor type as `str(TensorType)` prints it: `tensor<1x3xf32>`, `tensor<f32>`,
    `tensor<16x!quant.uniform<i8<-127:127>:f32:0, {0.1:0, ...}>>`."""
    try:
        return _tensor(text.strip())
    except _TypeSyntaxError as e:
        raise ParseError(f"bad type '{_clip(text)}': {e}", file="<type>", line=1, column=1) from None


def _clip(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


# ----- the module parser -------------------------------------------------------------------------------------------
class _Located(Exception):
    """A ParseError message with the token it is about; parse_module adds the file."""

    def __init__(self, message: str, token):
        super().__init__(message)
        self.message = message
        self.token = token


class _ModuleBuilder(Transformer):
    """lark callbacks, one per grammar rule, run in reduction order: each op is added when its line is complete."""

    def reset(self, text: str = ""):
        self.text = text
        self.module: Optional[Module] = None
        self.values: Dict[str, Tuple[Value, _Token]] = {}

    # -- module
    def module_header(self, children):
        keyword, symbol = children
        if keyword != "qir.module":
            raise _Located(f"expected 'qir.module', found '{_clip(keyword)}'", keyword)
        name = symbol[1:]
        if name.startswith('"'):
            name = self._string(symbol, name)
        self.module = Module(name)
        return None

    def start(self, children):
        return self.module

    # -- ops
    def op_with_results(self, children):
        self._build(children[0], children[1], children[2:])

    def op_without_results(self, children):
        self._build((), children[0], children[1:])

    def result_list(self, children):
        return children

    operand_list = result_list
    type_list = result_list

    def _build(self, result_tokens, name_tok, body):
        name = str(name_tok)
        opdef = OPS.get(name)
        if opdef is None:
            raise _Located(f"unknown op '{name}'", name_tok)
        sugar_name, sugar_value, operand_tokens, attr_dict_tok, type_tokens, loc_tok = body
        operand_tokens = operand_tokens or ()
        type_tokens = type_tokens or ()

        n_operands = len(operand_tokens)
        counts = _operand_counts.get((name, id(opdef)))
        if counts is None:
            counts = _operand_counts[(name, id(opdef))] = _operand_count_range(opdef)
        if not counts[0] <= n_operands <= counts[1]:
            raise _Located(f"{name} takes {_operand_count_text(opdef)}, got {n_operands}", name_tok)
        n_results = len(result_tokens)
        if not opdef.variadic_results and n_results != len(opdef.results):
            raise _Located(f"{name} has {len(opdef.results)} result(s), got {n_results}", name_tok)
        if len(type_tokens) != n_results:
            where = type_tokens[0] if type_tokens else name_tok
            raise _Located(f"{name} has {n_results} result(s) but {len(type_tokens)} result type(s)", where)
        types = [self._type(tok) for tok in type_tokens]

        values = self.values
        operands = []
        for tok in operand_tokens:
            entry = values.get(tok)
            if entry is None:
                raise _Located(f"undefined value {tok} (a value must be defined above its use)", tok)
            operands.append(entry[0])

        attrs = {}
        if sugar_name is not None:
            if name not in NAME_SUGAR_OPS:
                raise _Located(f"{name} takes no leading name string", sugar_name)
            attrs["name"] = self._string(sugar_name, sugar_name)
        if sugar_value is not None:
            if name not in VALUE_SUGAR_OPS:
                raise _Located(f"{name} takes no leading dense literal", sugar_value)
            if n_results != 1:
                raise _Located(f"{name} needs exactly one result", name_tok)
            attrs["value"] = self._dense(sugar_value, types[0], type_tokens[0])
        if attr_dict_tok is not None:
            attrs.update(self._attr_dict(name, opdef, attr_dict_tok, attrs))

        result_names = []
        for i, tok in enumerate(result_tokens):
            if tok in values:
                first_line = self.text.count("\n", 0, values[tok][1].pos) + 1
                raise _Located(f"value {tok} is defined twice (first at line {first_line})", tok)
            if tok in result_tokens[:i]:
                raise _Located(f"value {tok} is defined twice by the same op", tok)
            text = tok[1:]
            result_names.append(None if text.isdigit() else text)
        loc = self._location(loc_tok) if loc_tok is not None else ""
        op = self.module.create(name, operands, types, attrs, loc, result_names)
        for tok, result in zip(result_tokens, op.results):
            values[tok] = (result, tok)

    # -- attributes
    def _attr_dict(self, op_name: str, opdef, tok, given: dict) -> dict:
        """The attributes an ATTR_DICT token spells, checked against the op's declaration.  Dictionaries without
        arrays repeat from op to op (every 3x3 conv has the same one): those are read once per op name."""
        key = (op_name, id(opdef), str(tok))
        cached = _attr_dict_cache.get(key)
        if cached is not None and not (given.keys() & cached.keys()):
            return {k: list(v) if isinstance(v, list) else v for k, v in cached.items()}
        attrs = {}
        for attr_tok, item in self._attr_items(tok):
            attr_name = str(attr_tok)
            attr_def = opdef.attrs.get(attr_name)
            if attr_def is None:
                known = ", ".join(sorted(opdef.attrs)) or "none"
                raise _Located(f"{op_name} has no attribute '{attr_name}' (declared: {known})", attr_tok)
            if attr_name in attrs or attr_name in given:
                raise _Located(f"attribute '{attr_name}' given twice", attr_tok)
            attrs[attr_name] = self._attr_value(op_name, attr_name, attr_def, item)
        if len(tok) <= 400 and len(_attr_dict_cache) < 10_000 and \
                not any(isinstance(v, np.ndarray) for v in attrs.values()):
            _attr_dict_cache[key] = {k: list(v) if isinstance(v, list) else v for k, v in attrs.items()}
        return attrs

    def _attr_items(self, tok):
        """Split an ATTR_DICT token into (ATTR_NAME token, value token) and
        (ATTR_NAME token, (DENSE or DENSE_RESOURCE token, TENSOR_TYPE token)) pairs, with their offsets."""
        text, base = str(tok), tok.pos
        items = []
        pos = 1
        if text[1:-1].strip() == "":
            return items
        item_re = self.attr_item_re
        while True:
            m = item_re.match(text, pos)
            name_tok = _Token("ATTR_NAME", m.group("ATTR_NAME"), base + m.start("ATTR_NAME"))
            kind = m.lastgroup
            if kind == "DENSE_TYPE":
                literal = "DENSE" if m.group("DENSE") is not None else "DENSE_RESOURCE"
                value = (_Token(literal, m.group(literal), base + m.start(literal)),
                         _Token("TENSOR_TYPE", m.group(kind), base + m.start(kind)))
            else:
                value = _Token(kind, m.group(kind), base + m.start(kind))
            items.append((name_tok, value))
            pos = m.end()
            if text[pos] == "}":
                return items
            pos += 1  # the ","

    def _attr_value(self, op_name, attr_name, attr_def: AttrDef, item):
        want = attr_def.kind
        if isinstance(item, tuple):
            literal, type_tok = item
            got, where = "dense", literal
        else:
            got, where = item.type, item
        value = _NO_VALUE
        if got == "dense":
            if want == "dense":
                value = self._dense(literal, self._type(type_tok), type_tok)
        elif got == "INT":
            if want == "int":
                value = self._int(item)
            elif want == "float":
                value = float(self._int(item))
        elif got == "FLOAT":
            if want == "float":
                value = float(item)
        elif got == "BOOL":
            if want == "bool":
                value = item == "true"
        elif got == "STRING":
            if want == "str":
                value = self._string(item, item)
        elif got == "LIST":
            if want in ("ints", "floats"):
                numbers = self._list(item)
                if want == "floats":
                    value = [float(x) for x in numbers]
                elif all(isinstance(x, int) for x in numbers):
                    value = numbers
                else:
                    got = "FLOAT_LIST"
        elif want == "type":  # TENSOR_TYPE, QUANT_TYPE, SCALAR_TYPE
            value = self._type(item) if got == "TENSOR_TYPE" else self._element(item)
        if value is _NO_VALUE:
            raise _Located(f"attribute '{attr_name}' of {op_name} must be {_KIND_TEXT[want]}, "
                           f"found {_FOUND_TEXT.get(got, 'a type')}", where)
        if attr_def.choices is not None and value not in attr_def.choices:
            raise _Located(f"attribute '{attr_name}' of {op_name} must be one of "
                           f"{', '.join(map(repr, attr_def.choices))}, found {value!r}", where)
        return value

    # -- leaves
    def _int(self, tok, text=None) -> int:
        text = tok if text is None else text
        if len(text) > _MAX_DIGITS:
            raise _Located(f"integer literal of {len(text)} digits is too long", tok)
        return int(text)

    def _list(self, tok, text=None) -> list:
        """The numbers of a `[...]` literal (ints as int, others as float); a fresh list each time."""
        text = tok if text is None else text
        cached = _list_cache.get(text)
        if cached is not None:
            return list(cached)
        inner = text[1:-1].strip()
        out = []
        if inner:
            for item in inner.split(","):
                item = item.strip()
                out.append(self._int(tok, item) if _INT_RE.fullmatch(item) else float(item))
        if len(_list_cache) < 10_000:
            _list_cache[text] = tuple(out)
        return out

    def _string(self, tok, text) -> str:
        try:
            return json.loads(text)
        except ValueError as e:
            raise _Located(f"bad string literal: {e.args[0].split(':')[0]}", tok) from None

    def _location(self, tok) -> str:
        return self._string(tok, tok[4:-1].strip())

    def _type(self, tok) -> TensorType:
        t = _type_cache.get(tok)
        if t is not None:
            return t
        try:
            return _tensor(str(tok))
        except _TypeSyntaxError as e:
            raise _Located(f"bad type '{_clip(tok)}': {e}", tok) from None

    def _element(self, tok):
        try:
            return parse_element_type(str(tok))
        except _TypeSyntaxError as e:
            raise _Located(f"bad type '{_clip(tok)}': {e}", tok) from None

    def _dense(self, tok, t: TensorType, type_tok) -> np.ndarray:
        """The array a dense literal spells, in the numpy dtype of `t`'s storage element type, with `t`'s shape."""
        if tok.type == "DENSE_RESOURCE":
            raise _Located(ELIDED_MESSAGE, tok)
        dtype = t.storage.np_dtype
        size = t.size
        if any(d > _MAX_DIM for d in t.shape):
            raise _Located(f"a dimension of {_clip(t)} is too large for an array", type_tok)
        body = tok[6:-1]  # dense<...>
        if body.startswith('"'):
            text = self._string(tok, body)
            if not _HEX_RE.fullmatch(text):
                raise _Located('a dense hex literal is "0x" followed by hex digits', tok)
            nbytes = (len(text) - 2) // 2
            if len(text) % 2 or nbytes != size * dtype.itemsize:
                raise _Located(f"dense literal has {(len(text) - 2) / 2:g} bytes but {t} needs "
                               f"{size * dtype.itemsize}", tok)
            array = np.frombuffer(bytes.fromhex(text[2:]), dtype=dtype.newbyteorder("<"))
            if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
                raise _Located("a dense i1 literal may hold only the bytes 0 and 1", tok)
            return array.astype(dtype).reshape(t.shape)
        if not body.startswith("["):
            return self._splat(tok, body, t, dtype, type_tok)
        # a flat list of integers
        if dtype.kind not in "iub":
            raise _Located(f"an integer list literal needs an integer element type, not {t.storage}", type_tok)
        items = self._list(tok, body)
        if len(items) != size:
            raise _Located(f"dense literal has {len(items)} elements but {t} has {size}", tok)
        element = t.storage
        lo, hi = element.min, element.max
        for v in items:
            if not lo <= v <= hi:
                raise _Located(f"{v} does not fit {element}", tok)
        return np.array(items, dtype=dtype).reshape(t.shape)

    def _splat(self, tok, body: str, t: TensorType, dtype, type_tok) -> np.ndarray:
        """dense<v>: every element of `t` equals v (an integer for integer types, a float's repr for float ones)."""
        if dtype.kind in "iu":
            if not re.fullmatch(r"[-+]?[0-9]+", body):
                raise _Located(f"a splat of {t.storage} needs an integer, not {_clip(body)}", tok)
            v = int(body)
            if not t.storage.min <= v <= t.storage.max:
                raise _Located(f"{v} does not fit {t.storage}", tok)
        elif dtype.kind == "f":
            v = float(body)
        else:
            raise _Located(f"a splat literal needs an integer or float element type, not {t.storage}", type_tok)
        return np.full(t.shape, v, dtype=dtype)


_NO_VALUE = object()
_attr_dict_cache: Dict[Tuple[str, int, str], dict] = {}
_HEX_RE = re.compile(r"0x[0-9A-Fa-f]*")
_MAX_DIM = 2 ** 40  # numpy cannot shape an array (even an empty one) with dimensions near 2**63
_INT_RE = re.compile(r"[-+]?[0-9]+")
_FOUND_TEXT = {"dense": "a dense array", "INT": "an int", "FLOAT": "a float", "BOOL": "a bool", "STRING": "a string",
               "LIST": "a list", "FLOAT_LIST": "a list with a non-integer element"}
_KIND_TEXT = {"int": "an int", "float": "a float", "bool": "true or false", "str": "a string",
              "ints": "a list of ints", "floats": "a list of numbers", "dense": "a dense array",
              "type": "a type"}


# Keyed by the declaration too, so that an op declared anew (tests do) is not checked against the old one.
_operand_counts: Dict[Tuple[str, int], Tuple[int, float]] = {}


def _operand_count_range(opdef) -> Tuple[int, float]:
    low = sum(1 for o in opdef.operands if not o.optional and not o.variadic)
    high = float("inf") if any(o.variadic for o in opdef.operands) else len(opdef.operands)
    return low, high


def _operand_count_text(opdef) -> str:
    required = sum(1 for o in opdef.operands if not o.optional and not o.variadic)
    if any(o.variadic for o in opdef.operands):
        return f"at least {required} operand(s)"
    if required == len(opdef.operands):
        return f"{required} operand(s)"
    return f"{required} to {len(opdef.operands)} operands"



class _Token(str):
    """A token: its text, terminal name and offset in the input (line and column are computed only for errors)."""

    __slots__ = ("type", "pos")

    def __new__(cls, type: str, value: str, pos: int):
        self = str.__new__(cls, value)
        self.type = type
        self.pos = pos
        return self


class _LalrDriver:
    """Runs lark's LALR(1) table for qir.lark with the builder's rule callbacks, lexing on the fly.

    lark compiles the grammar into the parse table and wraps our callbacks (`Lark(..., transformer=builder)`);
    this loop replaces lark's generic lexer + parser loop with one that keeps its state in local variables and
    lexes contextually: in each parser state one master regex of just the terminals that state accepts, with
    whitespace and comments skipped inside the same match.  Same grammar, same table, same callbacks, about three
    times faster, so that a 50,000-op module parses in a few seconds.
    """

    def __init__(self, lark: Lark):
        self.lark = lark
        parser = lark.parser.parser.parser  # lark.parsers.lalr_parser._Parser: the table and the rule callbacks
        table = parser.parse_table
        # plain-str keys: lark's are Token objects, whose Python-level __eq__ would slow every lookup
        self.states = {state: {str(k): v for k, v in actions.items()} for state, actions in table.states.items()}
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.rules = {rule: (len(rule.expansion), str(rule.origin.name), callback)
                      for rule, callback in parser.callbacks.items() if not isinstance(rule, str)}
        self.terminals = {t.name: t for t in lark.terminals}
        self.ignore = sorted(lark.ignore_tokens)
        skip = "|".join(f"(?:{self.terminals[n].pattern.to_regexp()})" for n in self.ignore)
        self.skip = f"(?:{skip})*"
        self.skip_re = re.compile(self.skip)
        self.scanners: Dict[int, re.Pattern] = {}
        self.any_token = self._compile(n for n in self.terminals if n not in self.ignore)
        # The pieces of an ATTR_DICT token, from the grammar's own terminal definitions.
        every = {t.name: t.pattern.to_regexp() for t in lark.grammar.compile(["start"], "*")[0]}
        ws = every["_WS"]
        values = "|".join(f"(?P<{n}>{every[n]})" for n in ("INT", "FLOAT", "BOOL", "STRING", "LIST"))
        dense = f"(?:(?P<DENSE>{every['DENSE']})|(?P<DENSE_RESOURCE>{every['DENSE_RESOURCE']})){ws}:{ws}" \
                f"(?P<DENSE_TYPE>{every['TENSOR_TYPE']})"
        types = "|".join(f"(?P<{n}>{every[n]})" for n in ("TENSOR_TYPE", "QUANT_TYPE", "SCALAR_TYPE"))
        self.attr_value_re = re.compile(f"(?:{values}|{dense}|{types})")
        self.attr_name_re = re.compile(every["ATTR_NAME"])
        self.dense_literal_re = re.compile(f"(?:{every['DENSE']}|{every['DENSE_RESOURCE']}){ws}")
        self.attr_item_re = re.compile(f"{ws}(?P<ATTR_NAME>{every['ATTR_NAME']}){ws}={ws}"
                                       f"(?:{values}|{dense}|{types}){ws}")
        self.ws_re = re.compile(ws)

    def _compile(self, names) -> re.Pattern:
        # literals before patterns, longer first: the order lark's own lexer tries them in
        terminals = sorted((self.terminals[n] for n in names),
                           key=lambda t: (-t.priority, t.pattern.type != "str", -len(t.pattern.value), t.name))
        alternatives = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals)
        return re.compile(f"{self.skip}(?:{alternatives})" if alternatives else f"{self.skip}(?!)")

    def _scanner(self, state: int) -> re.Pattern:
        regex = self.scanners.get(state)
        if regex is None:
            regex = self._compile(n for n in self.states[state] if n in self.terminals)
            self.scanners[state] = regex
        return regex

    def expected(self, state: int) -> List[str]:
        return sorted({_describe_terminal(self.lark, n) for n in self.states[state] if n.isupper()})

    def parse(self, text: str):
        states, rules, scanners = self.states, self.rules, self.scanners
        state_stack = [self.start_state]
        value_stack: list = []
        pos, end = 0, len(text)
        new_token = _Token
        while True:
            state = state_stack[-1]
            regex = scanners.get(state) or self._scanner(state)
            m = regex.match(text, pos)
            if m is None:
                start = self.skip_re.match(text, pos).end()
                if start == end:
                    break
                self._unexpected(text, start, state)
            kind = m.lastgroup
            pos = m.end()
            token = new_token(kind, m.group(kind), m.start(kind))
            while True:  # reduce as far as the token allows, then shift it
                action, arg = states[state].get(kind) or self._unexpected_token(token, state)
                if action is Shift:
                    state_stack.append(arg)
                    value_stack.append(token)
                    break
                size, origin, callback = rules[arg]
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                value_stack.append(callback(children))
                state = states[state_stack[-1]][origin][1]
                state_stack.append(state)
        # end of input: reduce until the start rule is complete
        end_token = new_token("$END", "", end)
        while True:
            state = state_stack[-1]
            action, arg = states[state].get("$END") or self._unexpected_token(end_token, state)
            size, origin, callback = rules[arg]
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            value_stack.append(callback(children))
            state_stack.append(states[state_stack[-1]][origin][1])
            if state_stack[-1] == self.end_state:
                return value_stack[-1]

    def _unexpected(self, text: str, pos: int, state: int):
        if text[pos] == "{" and "ATTR_DICT" in self.states[state]:
            self._diagnose_attr_dict(text, pos)
        m = self.any_token.match(text, pos)
        if m is not None and m.start(m.lastgroup) == pos:
            self._unexpected_token(_Token(m.lastgroup, m.group(m.lastgroup), pos), state)
        raise _Located(f"unexpected character {text[pos]!r}; expected {_one_of(self.expected(state))}",
                       _Token("CHAR", text[pos], pos))

    def _diagnose_attr_dict(self, text: str, pos: int):
        """Find where a malformed attribute dictionary goes wrong (the ATTR_DICT token did not match)."""
        def fail(message, at):
            found = repr(text[at]) if at < len(text) else "end of input"
            raise _Located(f"{message} in attribute dictionary, found {found}", _Token("CHAR", "", at))

        skip = self.ws_re.match
        i = skip(text, pos + 1).end()
        if text.startswith("}", i):
            return
        while True:
            m = self.attr_name_re.match(text, i)
            if m is None:
                fail("expected an attribute name", i)
            i = skip(text, m.end()).end()
            if not text.startswith("=", i):
                fail("expected '=' after the attribute name", i)
            i = skip(text, i + 1).end()
            m = self.attr_value_re.match(text, i)
            if m is None and self.dense_literal_re.match(text, i):
                fail("expected ': tensor<...>' after the dense literal", self.dense_literal_re.match(text, i).end())
            if m is None:
                fail("expected an attribute value (int, float, true/false, string, [list], "
                     "dense<...> : tensor<...> or a type)", i)
            i = skip(text, m.end()).end()
            if text.startswith(",", i):
                i = skip(text, i + 1).end()
            elif text.startswith("}", i):
                return
            else:
                fail("expected ',' or '}'", i)

    def _unexpected_token(self, token, state: int):
        found = "end of input" if token.type == "$END" else f"'{_clip(token, 30)}'"
        raise _Located(f"unexpected {found}; expected {_one_of(self.expected(state))}", token)


# Readable names of the grammar's terminals, for "expected ..." messages.
_TERMINAL_TEXT = {
    "OP_NAME": "an op name", "SYMBOL": "@name", "VALUE": "a %value", "ATTR_DICT": "{attributes}",
    "STRING": "a string", "INT": "an integer", "FLOAT": "a float",
    "TENSOR_TYPE": "a tensor type", "QUANT_TYPE": "a quant type", "SCALAR_TYPE": "an element type",
    "LOCATION": "loc(...)", "DENSE": "dense<...>", "DENSE_RESOURCE": "dense_resource<...>", "LIST": "[...]",
    "BOOL": "true or false", "$END": "end of input",
}

_lock = threading.Lock()
_driver: Optional[_LalrDriver] = None
_builder: Optional[_ModuleBuilder] = None


def _get_driver() -> Tuple[_LalrDriver, _ModuleBuilder]:
    global _driver, _builder
    if _driver is None:
        builder = _ModuleBuilder()
        lark = Lark(grammar_text(), parser="lalr", lexer="basic", transformer=builder, maybe_placeholders=True)
        _driver, _builder = _LalrDriver(lark), builder
        builder.attr_item_re = _driver.attr_item_re
    return _driver, _builder


def _describe_terminal(lark: Lark, name: str) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    try:
        pattern = lark.get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'" if pattern.type == "str" else name


def _position(text: str, pos: int) -> Tuple[int, int]:
    """1-based line and column of offset `pos`."""
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _end_position(text: str) -> Tuple[int, int]:
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def parse_module(text, filename: str = "<string>") -> Module:
    """Parse a module's text (str, or UTF-8 bytes).  Raises ParseError (file:line:col: message) on any malformed
    input.  The module is not verified: call `qirc.qir.verifier.verify` for the IR's rules."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            prefix = bytes(text[:e.start]).decode("utf-8", errors="replace")
            line, column = _end_position(prefix)
            raise ParseError("input is not valid UTF-8", file=filename, line=line, column=column) from None
    load_dialects()
    with _lock:
        driver, builder = _get_driver()
        builder.reset(text)
        # Every object the parse creates stays alive; without this the cyclic GC rescans the growing module
        # again and again (a quarter of the time on a 50,000-op module).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return driver.parse(text)
        except _Located as e:
            line, column = _position(text, e.token.pos)
            raise ParseError(e.message, file=filename, line=line, column=column) from None
        finally:
            if gc_was_enabled:
                gc.enable()
            builder.reset()


def _one_of(items: List[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) > 8:
        return ", ".join(items[:8]) + ", ..."
    return "one of " + ", ".join(items)
