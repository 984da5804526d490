"""Module.ops(): the order is kept incrementally and must stay exactly the lexicographic topological order by seq
(what printing and emission rely on), checked against networkx's sort after every step of random mutation
sequences like those passes make: create ops, redirect uses (replace_op), rewire single operands, erase."""
from __future__ import annotations

import random

import networkx as nx
import pytest

from qirc.qir.ir import Module, Operation, input_op, output_op
from qirc.qir.types import f32, tensor

T = tensor([2], f32)


def reference_order(module: Module):
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(module._ops)  # insertion order, the tie-break of equal seqs
    for op in module._ops:
        for i, v in enumerate(op.operands):
            graph.add_edge(v.owner, op, key=i)
    return list(nx.lexicographical_topological_sort(graph, key=lambda o: o.seq))


def relu(module, x, loc):
    return module.create("onnx.Relu", [x], [T], loc=loc)


def add(module, a, b, loc):
    return module.create("onnx.Add", [a, b], [T], loc=loc)


def random_module(rng: random.Random, size: int) -> Module:
    m = Module("t")
    values = [input_op(m, f"x{i}", T) for i in range(2)]
    for k in range(size):
        a, b = rng.choice(values[-6:]), rng.choice(values)
        values.append((add(m, a, b, f"/n{k}") if rng.random() < 0.5 else relu(m, a, f"/n{k}")).result)
    output_op(m, "y", values[-1])
    output_op(m, "z", values[len(values) // 2])
    return m


def acyclic_rewire(m: Module, rng: random.Random) -> bool:
    """Point one operand of a random op at a value that does not depend on that op (keeps the graph acyclic)."""
    ops = [o for o in m.ops() if o.operands and o.name != "qir.output"]
    if not ops:
        return False
    op = rng.choice(ops)
    downstream, work = {op}, [op]
    while work:
        for r in work.pop().results:
            for user, _ in r.uses:
                if user not in downstream:
                    downstream.add(user)
                    work.append(user)
    choices = [o.result for o in m.ops() if o.results and o not in downstream]
    if not choices:
        return False
    m.set_operand(op, rng.randrange(len(op.operands)), rng.choice(choices))
    return True


@pytest.mark.parametrize("seed", range(12))
def test_order_equals_the_reference_sort_after_every_mutation(seed):
    rng = random.Random(seed)
    m = random_module(rng, 40)
    assert m.ops() == reference_order(m)
    for step in range(60):
        kind = rng.choice(["insert_before_users", "rewire", "erase_dead", "append", "batch"])
        live = [o for o in m.ops() if o.results and o.name != "qir.input"]
        if kind == "insert_before_users" and live:
            # the typical rewrite: a new op (largest seq) takes over the uses of an existing value
            old = rng.choice(live)
            new = relu(m, old.result, f"/new{step}")
            m.replace_all_uses(old.result, new.result, except_ops=[new])
        elif kind == "rewire":
            acyclic_rewire(m, rng)
        elif kind == "erase_dead":
            m.erase_dead()
        elif kind == "append" and live:
            output_op(m, f"o{step}", relu(m, rng.choice(live).result, f"/tail{step}").result)
        elif kind == "batch":  # several mutations between two reads of the order
            for _ in range(rng.randrange(1, 5)):
                acyclic_rewire(m, rng)
            if live and rng.random() < 0.5:
                victim = rng.choice(live)
                if all(u.name != "qir.output" for r in victim.results for u, _ in r.uses):
                    m.replace_op(victim, [victim.operands[0]])
        if rng.random() < 0.7:  # sometimes mutate again before looking
            assert m.ops() == reference_order(m), f"step {step} ({kind})"
    assert m.ops() == reference_order(m)


def test_ops_added_out_of_sequence_and_re_added_ops_are_placed_exactly():
    rng = random.Random(7)
    m = random_module(rng, 20)
    m.ops()
    last = m.ops()[-3]
    early = Operation("onnx.Relu", [m.inputs[0].result], [T], loc="/early")
    early.seq = -1  # smaller than every seq: not an append
    m.add(early)
    output_op(m, "e", early.result)
    assert m.ops() == reference_order(m)
    assert m.ops().index(early) < m.ops().index(last)
    dead = relu(m, m.inputs[1].result, "/dead")
    m.ops()
    m.erase(dead)
    m.add(dead)  # erased then added back: must appear once, in its place
    assert m.ops() == reference_order(m) and m.ops().count(dead) == 1


def test_clone_keeps_the_order_and_a_cycle_is_reported():
    m = random_module(random.Random(3), 30)
    c = m.clone()
    assert [o.loc for o in c.ops()] == [o.loc for o in m.ops()] and c.ops() == reference_order(c)
    a = relu(m, m.inputs[0].result, "/a")
    b = relu(m, a.result, "/b")
    m.set_operand(a, 0, b.result)
    cycle = m.find_cycle()
    assert cycle is not None and {o.loc for o in cycle} == {"/a", "/b"}
    assert m.clone is not None and c.find_cycle() is None
    with pytest.raises(ValueError, match="form a cycle"):
        m.ops()


def test_order_kept_through_the_real_pipeline_equals_a_fresh_sort():
    # the passes of a real compile mutate the module in every way they do; the kept order must still be the sort
    from pathlib import Path

    from qirc.backends.deeploy.targets import get_target
    from qirc.driver import build_passes
    from qirc.frontends.onnx import import_onnx
    from qirc.qir.passes import PassManager

    model = Path(__file__).resolve().parents[1] / "examples" / "resnet8" / "model.onnx"
    module = import_onnx(str(model))
    assert module.ops() == reference_order(module)
    for p in build_passes(get_target("deeploy-siracusa")):
        PassManager([p]).run(module)
        assert module.ops() == reference_order(module), p.name
