"""SSA values, operations and the module graph.

A `Module` owns its operations in a networkx `MultiDiGraph` whose nodes are `Operation`s and whose edges run from the
op that defines a value to each op that uses it (edge key = operand index, edge data `value`).  `Value.uses` mirrors the
edges so that a pass can walk users without touching networkx.  All mutation goes through Module methods, which keep
the two views consistent.

The order of ops is `Module.ops()`: a deterministic topological order (ties broken by creation order), so printing and
emission are stable.  Graph inputs are the `qir.input` ops in creation order, outputs the `qir.output` ops likewise.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

from .ops import OpDef, get_op_def
from .types import TensorType

_seq = itertools.count()


class Value:
    """An SSA value: result `index` of op `owner`, of type `type`; `uses` lists (op, operand index) pairs."""

    __slots__ = ("type", "owner", "index", "uses", "name", "__weakref__")

    def __init__(self, type: TensorType, owner: "Operation", index: int, name: Optional[str] = None):
        self.type = type
        self.owner = owner
        self.index = index
        self.uses: List[Tuple["Operation", int]] = []
        self.name = name

    @property
    def users(self) -> List["Operation"]:
        seen, out = set(), []
        for op, _ in self.uses:
            if id(op) not in seen:
                seen.add(id(op))
                out.append(op)
        return out

    @property
    def has_one_use(self) -> bool:
        return len(self.uses) == 1

    def __repr__(self):
        return f"<Value %{self.name or '?'} : {self.type}>"


class Operation:
    """One op: `name` (e.g. `int.conv`), operand Values, result Values, attributes, and a location string."""

    __slots__ = ("name", "operands", "results", "attrs", "loc", "seq", "module", "__weakref__")

    def __init__(self, name: str, operands: Sequence[Value] = (), result_types: Sequence[TensorType] = (),
                 attrs: Optional[Dict[str, Any]] = None, loc: str = "", result_names: Sequence[Optional[str]] = ()):
        self.name = name
        self.operands: List[Value] = list(operands)
        names = list(result_names) + [None] * (len(result_types) - len(result_names))
        self.results: List[Value] = [Value(t, self, i, n) for i, (t, n) in enumerate(zip(result_types, names))]
        self.attrs: Dict[str, Any] = dict(attrs or {})
        self.loc = loc
        self.seq = next(_seq)
        self.module: Optional[Module] = None

    @property
    def opdef(self) -> OpDef:
        return get_op_def(self.name)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results")
        return self.results[0]

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]

    def attr(self, name: str):
        """The attribute's value, or its declared default."""
        if name in self.attrs:
            return self.attrs[name]
        return self.opdef.attr_default(name)

    def operand(self, name: str) -> Optional[Value]:
        i = self.opdef.operand_index(name)
        return self.operands[i] if i < len(self.operands) else None

    def __repr__(self):
        return f"<Operation {self.name} loc={self.loc!r}>"


class Module:
    """A model: a named graph of operations."""

    def __init__(self, name: str = "module"):
        self.name = name
        self.graph = nx.MultiDiGraph()
        self._order_cache: Optional[List[Operation]] = None

    # ----- building ----------------------------------------------------------------------------------------------
    def add(self, op: Operation) -> Operation:
        """Insert an op whose operands are already defined in this module; returns it."""
        if op.module is not None:
            raise ValueError(f"{op} already belongs to a module")
        op.module = self
        self.graph.add_node(op)
        for i, v in enumerate(op.operands):
            self._link(v, op, i)
        self._order_cache = None
        return op

    def create(self, name: str, operands: Sequence[Value] = (), result_types: Sequence[TensorType] = (),
               attrs: Optional[Dict[str, Any]] = None, loc: str = "", result_names=()) -> Operation:
        """Create an op and add it: `module.create("int.add", [a, b], [t], loc=...)`."""
        return self.add(Operation(name, operands, result_types, attrs, loc, result_names))

    def _link(self, v: Value, op: Operation, i: int) -> None:
        if v.owner.module is not self:
            raise ValueError(f"operand {i} of {op.name} ({op.loc}) is not defined in this module")
        v.uses.append((op, i))
        self.graph.add_edge(v.owner, op, key=i, value=v)

    def _unlink(self, op: Operation, i: int) -> None:
        v = op.operands[i]
        v.uses.remove((op, i))
        self.graph.remove_edge(v.owner, op, key=i)

    # ----- mutation ----------------------------------------------------------------------------------------------
    def set_operand(self, op: Operation, i: int, value: Value) -> None:
        self._unlink(op, i)
        op.operands[i] = value
        self._link(value, op, i)
        self._order_cache = None

    def set_operands(self, op: Operation, values: Sequence[Value]) -> None:
        for i in range(len(op.operands)):
            self._unlink(op, i)
        op.operands = list(values)
        for i, v in enumerate(op.operands):
            self._link(v, op, i)
        self._order_cache = None

    def replace_all_uses(self, old: Value, new: Value, except_ops: Iterable[Operation] = ()) -> None:
        """Make every user of `old` (but those in except_ops) use `new` instead."""
        skip = {id(o) for o in except_ops}
        for op, i in list(old.uses):
            if id(op) not in skip:
                self.set_operand(op, i, new)

    def replace_op(self, op: Operation, new_values: Sequence[Value]) -> None:
        """Redirect the uses of op's results to new_values, then erase op."""
        if len(new_values) != len(op.results):
            raise ValueError(f"replace_op: {op.name} has {len(op.results)} results, got {len(new_values)} values")
        for old, new in zip(op.results, new_values):
            self.replace_all_uses(old, new)
        self.erase(op)

    def erase(self, op: Operation) -> None:
        """Remove an op whose results are unused."""
        for r in op.results:
            if r.uses:
                users = ", ".join(f"{u.name} ({u.loc})" for u, _ in r.uses)
                raise ValueError(f"cannot erase {op.name} ({op.loc}): its result is still used by {users}")
        for i in range(len(op.operands)):
            self._unlink(op, i)
        self.graph.remove_node(op)
        op.module = None
        self._order_cache = None

    def erase_dead(self) -> int:
        """Erase ops (other than qir.output and qir.input) whose results are all unused, transitively; count them."""
        n = 0
        work = [op for op in self.graph.nodes if self._is_dead(op)]
        while work:
            op = work.pop()
            if op.module is not self or not self._is_dead(op):
                continue
            producers = [v.owner for v in op.operands]
            self.erase(op)
            n += 1
            work.extend(p for p in producers if self._is_dead(p))
        return n

    @staticmethod
    def _is_dead(op: Operation) -> bool:
        return op.name not in ("qir.output", "qir.input") and all(not r.uses for r in op.results)

    # ----- queries -----------------------------------------------------------------------------------------------
    def ops(self) -> List[Operation]:
        """All ops in deterministic topological order (ties broken by creation order)."""
        if self._order_cache is None:
            self._order_cache = list(nx.lexicographical_topological_sort(self.graph, key=lambda o: o.seq))
        return list(self._order_cache)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.ops())

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def walk(self, name: Optional[str] = None) -> List[Operation]:
        """Ops in order, optionally only those named `name` (or with a dialect prefix ending in '.')."""
        ops = self.ops()
        if name is None:
            return ops
        if name.endswith("."):
            return [o for o in ops if o.name.startswith(name)]
        return [o for o in ops if o.name == name]

    @property
    def inputs(self) -> List[Operation]:
        """The qir.input ops, in creation order (= graph input order)."""
        return sorted((o for o in self.graph.nodes if o.name == "qir.input"), key=lambda o: o.seq)

    @property
    def outputs(self) -> List[Operation]:
        """The qir.output ops, in creation order (= graph output order)."""
        return sorted((o for o in self.graph.nodes if o.name == "qir.output"), key=lambda o: o.seq)

    def input_names(self) -> List[str]:
        return [o.attrs["name"] for o in self.inputs]

    def output_names(self) -> List[str]:
        return [o.attrs["name"] for o in self.outputs]

    def find_cycle(self) -> Optional[List[Operation]]:
        # nx.find_cycle's edge DFS costs ~100x the topological-sort check on an acyclic graph (the common case;
        # the verifier asks after every pass), so look for the cycle only when there is one
        if nx.is_directed_acyclic_graph(self.graph):
            return None
        try:
            return [u for u, _v, *_ in nx.find_cycle(self.graph)]
        except nx.NetworkXNoCycle:
            return None

    def move_after(self, op: Operation, anchor: Operation) -> None:
        """Order hint only: `op` sorts right after `anchor` among ops that are otherwise unordered."""
        op.seq = anchor.seq + 0.5 if isinstance(anchor.seq, int) else anchor.seq + 1e-6
        self._order_cache = None

    def clone(self) -> "Module":
        """A deep copy: new ops and values; attribute arrays are shared (treat them as immutable)."""
        m = Module(self.name)
        vmap: Dict[int, Value] = {}
        for op in self.ops():
            new = Operation(op.name, [vmap[id(v)] for v in op.operands], [r.type for r in op.results],
                            dict(op.attrs), op.loc, [r.name for r in op.results])
            new.seq = op.seq
            m.add(new)
            for old_r, new_r in zip(op.results, new.results):
                vmap[id(old_r)] = new_r
        return m


# ----- small builders used by frontends, passes and tests ----------------------------------------------------------
def const_op(module: Module, value: np.ndarray, type: TensorType, loc: str = "", name: Optional[str] = None) -> Value:
    """Add a `qir.const` holding `value` (already in the runtime dtype of `type`) and return its result."""
    value = np.asarray(value)
    return module.create("qir.const", [], [type], {"value": value}, loc, [name]).result


def input_op(module: Module, name: str, type: TensorType, loc: str = "") -> Value:
    return module.create("qir.input", [], [type], {"name": name}, loc or name, [_ssa_name(name)]).result


def output_op(module: Module, name: str, value: Value, loc: str = "") -> Operation:
    return module.create("qir.output", [value], [], {"name": name}, loc or name)


def pad_op(module: Module, x: Value, spatial_pads: Sequence[int], value: int, loc: str = "") -> Value:
    """Add an `int.pad` of the N, C, spatial... tensor `x` by ONNX-style `spatial_pads` (begins of the spatial axes,
    then their ends; N and C are not padded) with the constant `value`, and return its result.  Windowed ops (conv,
    pools) use it to make their padding explicit, where it must be a zero point or a value that never wins."""
    pads = [int(p) for p in spatial_pads]
    n = len(pads) // 2
    begins, ends = [0, 0] + pads[:n], [0, 0] + pads[n:]
    shape = tuple(d + b + e for d, b, e in zip(x.type.shape, begins, ends))
    return module.create("int.pad", [x], [x.type.with_shape(shape)], {"pads": begins + ends, "value": int(value)},
                         loc).result


def _ssa_name(s: str) -> str:
    import re
    s = re.sub(r"[^A-Za-z0-9_]", "_", s)
    return s if s and not s[0].isdigit() else "v" + s
