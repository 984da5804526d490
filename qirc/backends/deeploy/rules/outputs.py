"""Graph outputs: a graph that ends in a reshape (Deeploy leaves such an output buffer zero)."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module
from ..targets import DeeployTarget
from .common import FUSING, fail
from .rule import rule


@rule("trailing-reshapes")
def trailing_reshapes(module: Module, target: DeeployTarget) -> None:
    """A graph output produced by reshape(requant(x)) becomes requant(reshape(x)); any other trailing reshape (after
    a fused op, or of a per-channel requant) is refused."""
    for out in module.outputs:
        rs = out.operands[0].owner
        if rs.name != "int.reshape":
            continue
        rqs = rs.operands[0].owner
        movable = (rqs.name == "int.requant_shift" and len(rqs.result.uses) == 1 and len(rs.result.uses) == 1
                   and rqs.operands[0].owner.name not in FUSING)
        if not movable:
            raise fail(rs, target, "the graph ends in a reshape (Deeploy leaves such an output buffer zero) and "
                                   "the reshape cannot move before the last computing op")
        x = rqs.operands[0]
        new_shape = rs.result.type.shape
        params = [np.asarray(rqs.attrs[n]) for n in ("mul", "add")]
        if any(p.size != 1 for p in params):
            raise fail(rs, target, "the graph ends in a reshape of a per-channel requant, which cannot move")
        new_rs = module.create("int.reshape", [x], [x.type.with_shape(new_shape)], {"shape": list(new_shape)},
                               rs.loc)
        new_rqs = module.create("int.requant_shift", [new_rs.result], [rs.result.type], dict(rqs.attrs), rqs.loc,
                                [rs.result.name])
        module.replace_op(rs, [new_rqs.result])
        module.erase(rqs)
