"""Greedy pattern rewriting, after xDSL's `RewritePattern` / `PatternRewriteWalker` and MLIR's greedy driver.

    class FoldDoubleDcast(RewritePattern):
        def match_and_rewrite(self, op, rewriter) -> bool:
            if op.name != "quant.dcast" or op.operands[0].owner.name != "quant.qcast":
                return False
            rewriter.replace_op(op, [op.operands[0].owner.operands[0]])
            return True

    apply_patterns(module, [FoldDoubleDcast()])

`apply_patterns` keeps a worklist seeded with every op in topological order.  When a pattern rewrites an op, the ops
the rewrite touched are queued again: ops it created, ops whose operands it changed, and the producers of erased ops'
operands (they may now be dead or have a single use).  So each rewrite costs work proportional to what it touched,
not to the module's size, and a 20,000-op chain is rewritten in linear time.  When the worklist runs dry after
something changed, one more full sweep confirms that no pattern applies anywhere (a pattern may look further than
its op's neighbours); `max_iterations` bounds the number of sweeps.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, Optional, Sequence, Set, Union

from .ir import Module, Operation, Value
from .types import TensorType


class RewritePattern:
    """One local rewrite.  Subclasses implement `match_and_rewrite`, which returns True iff it changed the IR
    (through the rewriter only, so the driver sees what changed)."""

    def match_and_rewrite(self, op: Operation, rewriter: "Rewriter") -> bool:
        raise NotImplementedError(f"{type(self).__name__}.match_and_rewrite")


class Rewriter:
    """Mutates a Module on behalf of patterns and records what changed.

    `changed` is True once any mutation went through it.  Every mutation also queues the affected ops on the
    driver's worklist (when one is attached), which is what keeps `apply_patterns` incremental.
    """

    def __init__(self, module: Module):
        self.module = module
        self.changed = False
        self.current_op: Optional[Operation] = None
        self._notify = None  # set by the driver: callable(op) that queues an op for another visit

    # ----- creation --------------------------------------------------------------------------------------------
    def create_op(self, name: str, operands: Sequence[Value] = (), result_types: Sequence[TensorType] = (),
                  attrs: Optional[Dict[str, Any]] = None, loc: Optional[str] = None,
                  result_names: Sequence[Optional[str]] = ()) -> Operation:
        """Create and insert an op; its location defaults to that of the op being rewritten."""
        if loc is None:
            loc = self.current_op.loc if self.current_op is not None else ""
        return self.insert_op(Operation(name, operands, result_types, attrs, loc, result_names))

    def insert_op(self, op: Operation) -> Operation:
        """Insert an op built elsewhere (its operands must already be in the module)."""
        self.module.add(op)
        self._mark(op)
        return op

    # ----- mutation --------------------------------------------------------------------------------------------
    def set_operand(self, op: Operation, index: int, value: Value) -> None:
        old = op.operands[index]
        self.module.set_operand(op, index, value)
        self._mark(op)
        self._touch_producer(old)

    def replace_all_uses(self, old: Value, new: Value, except_ops: Iterable[Operation] = ()) -> None:
        """Make every user of `old` (but those in except_ops) use `new`."""
        if old is new:
            return
        skip = {id(o) for o in except_ops}
        users = [u for u, _ in old.uses if id(u) not in skip]
        self.module.replace_all_uses(old, new, except_ops)
        for u in users:
            self._mark(u)
        self._touch_producer(old)
        if users:
            self.changed = True

    def replace_op(self, op: Operation, new_values: Union[Sequence[Value], Operation]) -> None:
        """Redirect the uses of op's results to `new_values` (or to another op's results), then erase op."""
        if isinstance(new_values, Operation):
            new_values = new_values.results
        new_values = list(new_values)
        if len(new_values) != len(op.results):
            raise ValueError(f"replace_op: {op.name} has {len(op.results)} results, got {len(new_values)} values")
        for old, new in zip(op.results, new_values):
            self.replace_all_uses(old, new)
        self.erase_op(op)

    def erase_op(self, op: Operation) -> None:
        """Erase an op whose results are unused; its producers are queued again (they may now be dead)."""
        producers = [v.owner for v in op.operands]
        self.module.erase(op)
        self.changed = True
        for p in producers:
            if p.module is self.module:
                self._mark(p, changed=False)

    def set_attr(self, op: Operation, name: str, value: Any) -> None:
        op.attrs[name] = value
        self._mark(op)

    def set_result_type(self, value: Value, type: TensorType) -> None:
        """Retype a value in place; its users are queued again since their rules may now match."""
        value.type = type
        self._mark(value.owner)
        for u in value.users:
            self._mark(u, changed=False)

    # ----- bookkeeping -----------------------------------------------------------------------------------------
    def _mark(self, op: Operation, changed: bool = True) -> None:
        if changed:
            self.changed = True
        if self._notify is not None:
            self._notify(op)

    def _touch_producer(self, value: Value) -> None:
        owner = value.owner
        if owner is not None and owner.module is self.module:
            self._mark(owner, changed=False)


class PatternsDidNotConverge(RuntimeError):
    """The patterns kept rewriting past the iteration bound: two of them probably undo each other."""


def apply_patterns(module: Module, patterns: Sequence[RewritePattern], max_iterations: int = 10,
                   max_rewrites: Optional[int] = None) -> int:
    """Apply `patterns` greedily until none applies anywhere; return the number of rewrites made.

    Ops are visited from a worklist seeded in topological order; for each op the patterns are tried in the given
    order and the first that returns True wins.  `max_iterations` bounds the full sweeps (a converging rewrite
    needs 2: the one that rewrites and the one that confirms); `max_rewrites` (default 10 per op + 1000) bounds
    rewrites within a sweep.  Exceeding either raises PatternsDidNotConverge.
    """
    patterns = list(patterns)
    rewriter = Rewriter(module)
    queue: Deque[Operation] = deque()
    queued: Set[int] = set()

    def push(op: Operation) -> None:
        if id(op) not in queued:
            queued.add(id(op))
            queue.append(op)

    rewriter._notify = push
    total = 0
    for _sweep in range(max_iterations):
        limit = max_rewrites if max_rewrites is not None else 10 * len(module) + 1000
        for op in module.ops():
            push(op)
        rewrites = 0
        while queue:
            op = queue.popleft()
            queued.discard(id(op))
            if op.module is not module:
                continue  # erased since it was queued
            for pattern in patterns:
                rewriter.current_op = op
                if pattern.match_and_rewrite(op, rewriter):
                    rewrites += 1
                    if op.module is module:
                        push(op)  # the op survived: another pattern (or the same) may apply now
                    break
            if rewrites > limit:
                raise PatternsDidNotConverge(
                    f"patterns {', '.join(type(p).__name__ for p in patterns)} made more than {limit} rewrites "
                    f"in one sweep without converging (last on {op.name} at {op.loc!r})")
        rewriter.current_op = None
        total += rewrites
        if rewrites == 0:
            return total
    raise PatternsDidNotConverge(f"patterns {', '.join(type(p).__name__ for p in patterns)} still rewrote in sweep "
                                 f"{max_iterations} (max_iterations)")
