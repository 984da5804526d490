"""SSA values, operations and the module graph.

A `Module` owns its operations; the edges of its graph run from the op that defines a value to each op that uses it
(edge key = operand index).  `Value.uses` lists them per value, so that a pass walks users and producers without a
graph library; `Module.graph` is a small read-only view (nodes, edges by key) for the verifier.  All mutation goes
through Module methods, which keep operands and uses consistent (an edge is an operand whose value lists the use:
no third structure to keep in step).

The order of ops is `Module.ops()`: the lexicographically smallest topological order by creation sequence (`Kahn`'s
algorithm taking the ready op of smallest `seq` first, ties by insertion order), so printing and emission are stable.
The module keeps that order incrementally instead of sorting again after every mutation:
  - a new op with the largest seq (every op a pass creates) has no users yet, so it goes last: appended;
  - erasing an op (never used: a sink) leaves the others' relative order as it is: it is skipped;
  - changing an op's operands changes the step at which it becomes ready, and Kahn's run on the new graph equals the
    old order up to the earliest such step: only the suffix from there is sorted again, lazily, at the next ops().
Graph inputs are the `qir.input` ops in creation order, outputs the `qir.output` ops likewise.
"""
from __future__ import annotations

import heapq
import itertools
import operator
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .ops import OpDef, get_op_def
from .types import TensorType

_seq = itertools.count()
_by_seq = operator.attrgetter("seq")
_kahn_runs = itertools.count(1)  # each Kahn run marks the ops it sorts with its own number (Operation.kahn_run)


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

    __slots__ = ("name", "operands", "results", "attrs", "loc", "seq", "module", "verified", "kahn_run", "kahn_wait",
                 "__weakref__")

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
        # what the verifier last found well-formed about this op (`verifier.snapshot`), or None: an incremental
        # verification skips an op whose snapshot still holds
        self.verified: Optional[tuple] = None
        # Module._kahn's bookkeeping, kept on the op rather than in dicts keyed by ops: the sort then touches only
        # the ops and values it walks (a large module's dicts miss the caches on every look-up)
        self.kahn_run = 0
        self.kahn_wait = 0

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


class _GraphView:
    """What the verifier reads of a module's graph: `nodes`, membership, and the value on edge (producer, user, key)."""

    def __init__(self, module: "Module"):
        self._module = module

    @property
    def nodes(self) -> List["Operation"]:
        return list(self._module._ops)

    def __contains__(self, op) -> bool:
        return op in self._module._ops

    def __len__(self) -> int:
        return len(self._module._ops)

    def number_of_nodes(self) -> int:
        return len(self._module._ops)

    def get_edge_data(self, producer: "Operation", user: "Operation", key: int) -> Optional[Dict[str, "Value"]]:
        """The edge exists when `user` reads a value of `producer` as operand `key` and that value lists the use."""
        if user not in self._module._ops or not 0 <= key < len(user.operands):
            return None
        value = user.operands[key]
        if value.owner is not producer or (user, key) not in value.uses:
            return None
        return {"value": value}


class Module:
    """A model: a named graph of operations."""

    def __init__(self, name: str = "module"):
        self.name = name
        self._ops: Dict[Operation, int] = {}  # op -> insertion number (the tie-break of equal seqs)
        self._inserted = itertools.count()
        self._max_seq = float("-inf")
        # the order: `_order` was the exact order when last computed, except from position `_dirty` on; ops added
        # out of sequence wait in `_pending`; erased ops stay in `_order` (skipped) until the next ops()
        self._order: Optional[List[Operation]] = []  # kept from the first op on: a module built op by op is in order
        self._pos: Optional[Dict[Operation, int]] = None
        self._dirty = 0
        self._pending: Dict[Operation, None] = {}
        self._erased: set = set()
        # ops that may have become dead since the last erase_dead: those added since (no uses yet) and the producers
        # of operands unlinked since; every other op had a use then and has kept it
        self._maybe_dead: Dict[Operation, None] = {}

    @property
    def graph(self) -> _GraphView:
        return _GraphView(self)

    # ----- building ----------------------------------------------------------------------------------------------
    def add(self, op: Operation) -> Operation:
        """Insert an op whose operands are already defined in this module; returns it."""
        if op.module is not None:
            raise ValueError(f"{op} already belongs to a module")
        for i, v in enumerate(op.operands):
            if v.owner.module is not self:
                raise ValueError(f"operand {i} of {op.name} ({op.loc}) is not defined in this module")
        op.module = self
        op.verified = None  # its links are this module's now: check it again
        self._ops[op] = next(self._inserted)
        self._maybe_dead[op] = None
        for i, v in enumerate(op.operands):
            self._link(v, op, i)
        if self._order is not None:
            if op in self._erased:
                self._order = None  # it still has a (skipped) place in the old order: start afresh
            elif op.seq > self._max_seq:
                # a sink of the largest seq: Kahn picks it only when nothing else is ready, i.e. last
                if self._pos is not None:
                    self._pos[op] = len(self._order)
                self._order.append(op)
            else:
                self._pending[op] = None
                self._dirty = min(self._dirty, self._ready_step(op))
        if op.seq > self._max_seq:
            self._max_seq = op.seq
        return op

    def create(self, name: str, operands: Sequence[Value] = (), result_types: Sequence[TensorType] = (),
               attrs: Optional[Dict[str, Any]] = None, loc: str = "", result_names=()) -> Operation:
        """Create an op and add it: `module.create("int.add", [a, b], [t], loc=...)`."""
        return self.add(Operation(name, operands, result_types, attrs, loc, result_names))

    def _link(self, v: Value, op: Operation, i: int) -> None:
        if v.owner.module is not self:
            raise ValueError(f"operand {i} of {op.name} ({op.loc}) is not defined in this module")
        v.uses.append((op, i))

    def _unlink(self, op: Operation, i: int) -> None:
        v = op.operands[i]
        v.uses.remove((op, i))
        self._maybe_dead[v.owner] = None

    def _ready_step(self, op: Operation) -> int:
        """The step of Kahn's run (a position in the last computed order) at which `op` becomes ready: one past its
        last producer's position (producers not placed yet count as nothing: their own step was recorded)."""
        pos = self._pos
        if pos is None:
            pos = self._pos = {o: i for i, o in enumerate(self._order)}
        return max((pos.get(v.owner, -1) for v in op.operands), default=-1) + 1

    # ----- mutation ----------------------------------------------------------------------------------------------
    def set_operand(self, op: Operation, i: int, value: Value) -> None:
        tracked = self._order is not None
        if tracked:
            before = self._ready_step(op)
        self._unlink(op, i)
        op.operands[i] = value
        self._link(value, op, i)
        if tracked:
            self._dirty = min(self._dirty, before, self._ready_step(op))

    def set_operands(self, op: Operation, values: Sequence[Value]) -> None:
        tracked = self._order is not None
        if tracked:
            before = self._ready_step(op)
        for i in range(len(op.operands)):
            self._unlink(op, i)
        op.operands = list(values)
        for i, v in enumerate(op.operands):
            self._link(v, op, i)
        if tracked:
            self._dirty = min(self._dirty, before, self._ready_step(op))

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
        del self._ops[op]
        op.module = None
        if op in self._pending:
            del self._pending[op]
        elif self._order is not None:
            self._erased.add(op)  # a sink: the others keep their relative order; ops() skips it

    def erase_dead(self) -> int:
        """Erase ops (other than qir.output and qir.input) whose results are all unused, transitively; count them."""
        n = 0
        # only ops added or unlinked from since the last call can have become dead (not a scan of every op)
        work = [op for op in self._maybe_dead if op.module is self and self._is_dead(op)]
        self._maybe_dead = {}
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
        for r in op.results:  # a loop, not all(...): erase_dead asks this of every op, often; most have a use
            if r.uses:
                return False
        return op.name != "qir.output" and op.name != "qir.input"

    # ----- queries -----------------------------------------------------------------------------------------------
    def ops(self) -> List[Operation]:
        """All ops in deterministic topological order (ties broken by creation order)."""
        order = self._order
        if order is None:
            self._order = self._kahn([], list(self._ops))
        elif self._dirty < len(order) or self._pending:
            done = [o for o in order[:self._dirty] if o.module is self]
            rest = [o for o in order[self._dirty:] if o.module is self] + list(self._pending)
            self._order = self._kahn(done, rest)
        elif self._erased:
            self._order = [o for o in order if o.module is self]
        else:
            return list(order)
        self._pos = None
        self._dirty = len(self._order)
        self._pending.clear()
        self._erased.clear()
        return list(self._order)

    def _kahn(self, done: List[Operation], rest: List[Operation]) -> List[Operation]:
        """`done` followed by `rest` in Kahn's order (smallest seq first, then insertion number); the producers of
        `rest` are in `done` or `rest`.

        Kahn's run takes, at every step, the ready op of smallest key.  Most ops are ready by the time their key
        comes up (a pass rewrites a few edges at a time), so the ops are walked in key order and only those that
        are not ready when their turn comes wait in a heap until their last producer is placed; the op taken
        next is the smaller of the heap's top and the next ready op of the walk: the same order as a heap of
        every op, for a fraction of the heap operations.

        Each op of `rest` carries this run's number (`kahn_run`: "in rest") and its count of producers in `rest`
        not yet placed (`kahn_wait`, negated once the walk has gone past it while it waited)."""
        inserted = self._ops
        run = next(_kahn_runs)
        for op in rest:
            op.kahn_run = run
        walk = sorted(rest, key=_by_seq)
        previous = None
        for op in walk:  # equal seqs (rare) stay in list order; the key breaks them by insertion number
            if op.seq == previous:
                walk = sorted(rest, key=lambda o: (o.seq, inserted[o]))
                break
            previous = op.seq
        ascending = True  # every edge runs from a smaller key to a larger one: then the walk is Kahn's order
        for op in walk:
            n = 0
            seq = op.seq
            for v in op.operands:
                owner = v.owner
                if owner.kahn_run == run:
                    n += 1
                    if owner.seq > seq or (owner.seq == seq and inserted[owner] >= inserted[op]):
                        ascending = False
            op.kahn_wait = n
        if ascending:
            done.extend(walk)
            return done
        size = len(walk)
        heap: List[Tuple[Any, int, Operation]] = []
        out = done
        placed = len(out)
        append, pop, push = out.append, heapq.heappop, heapq.heappush
        i = 0
        while True:
            while i < size:
                nxt = walk[i]
                wait = nxt.kahn_wait
                if wait <= 0:
                    break
                nxt.kahn_wait = -wait  # passed while waiting: it joins the heap once ready
                i += 1
            if heap:
                top = heap[0]
                if i < size:
                    nxt = walk[i]
                    if top[0] < nxt.seq or (top[0] == nxt.seq and top[1] < inserted[nxt]):
                        op = pop(heap)[2]
                    else:
                        op = nxt
                        i += 1
                else:
                    op = pop(heap)[2]
            elif i < size:
                op = walk[i]
                i += 1
            else:
                break
            append(op)
            for r in op.results:
                for user, _ in r.uses:
                    if user.kahn_run == run:
                        wait = user.kahn_wait
                        if wait > 0:
                            user.kahn_wait = wait - 1
                        elif wait < 0:
                            user.kahn_wait = wait = wait + 1
                            if not wait:
                                push(heap, (user.seq, inserted[user], user))
        if len(out) - placed != size:
            self._order = None
            stuck = {o.name for o in walk if o.kahn_wait}
            raise ValueError(f"the ops of module @{self.name} form a cycle (through {', '.join(sorted(stuck))})")
        return out

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.ops())

    def __len__(self) -> int:
        return len(self._ops)

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
        return sorted((o for o in self._ops if o.name == "qir.input"), key=lambda o: o.seq)

    @property
    def outputs(self) -> List[Operation]:
        """The qir.output ops, in creation order (= graph output order)."""
        return sorted((o for o in self._ops if o.name == "qir.output"), key=lambda o: o.seq)

    def input_names(self) -> List[str]:
        return [o.attrs["name"] for o in self.inputs]

    def output_names(self) -> List[str]:
        return [o.attrs["name"] for o in self.outputs]

    def find_cycle(self) -> Optional[List[Operation]]:
        """Ops forming a cycle (each feeds the next, the last the first), or None for an acyclic module."""
        if self._order is not None and self._dirty >= len(self._order) and not self._pending:
            return None  # the kept order is a topological order of the current graph: no cycle
        try:
            self.ops()  # brings the order up to date, sorting only what changed; fails on a cycle
            return None
        except ValueError:
            pass
        remaining = dict.fromkeys(self._ops)
        waiting = {op: sum(1 for v in op.operands if v.owner in remaining) for op in remaining}
        ready = [op for op, n in waiting.items() if n == 0]
        while ready:
            op = ready.pop()
            del remaining[op]
            for r in op.results:
                for user, _ in r.uses:
                    if user in remaining:
                        waiting[user] -= 1
                        if waiting[user] == 0:
                            ready.append(user)
        if not remaining:
            return None
        # every op left waits for a producer that is also left: walk producers until one repeats
        path: List[Operation] = []
        seen: Dict[Operation, int] = {}
        op = min(remaining, key=lambda o: o.seq)
        while op not in seen:
            seen[op] = len(path)
            path.append(op)
            op = next(v.owner for v in op.operands if v.owner in remaining)
        cycle = path[seen[op]:]
        cycle.reverse()  # producer before user
        return cycle

    def move_after(self, op: Operation, anchor: Operation) -> None:
        """Order hint only: `op` sorts right after `anchor` among ops that are otherwise unordered."""
        op.seq = anchor.seq + 0.5 if isinstance(anchor.seq, int) else anchor.seq + 1e-6
        if op.seq > self._max_seq:
            self._max_seq = op.seq
        self._order = None

    def clone(self) -> "Module":
        """A deep copy: new ops and values; attribute arrays are shared (treat them as immutable)."""
        m = Module(self.name)
        vmap: Dict[int, Value] = {}
        order = self.ops()
        copies: List[Operation] = []
        for op in order:
            new = Operation(op.name, [vmap[id(v)] for v in op.operands], [r.type for r in op.results],
                            dict(op.attrs), op.loc, [r.name for r in op.results])
            new.seq = op.seq
            m.add(new)
            copies.append(new)
            for old_r, new_r in zip(op.results, new.results):
                vmap[id(old_r)] = new_r
        # the same graph with the same seqs has the same order: no need to sort it again
        m._order = copies
        m._dirty = len(copies)
        m._pos = None
        m._pending.clear()
        m._erased.clear()
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
