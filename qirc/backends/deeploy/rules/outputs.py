"""Graph outputs: a graph that ends in a reshape (Deeploy leaves such an output buffer zero)."""
from __future__ import annotations

import numpy as np

from ....qir.ir import Module
from ..targets import DeeployTarget
from .common import FUSING, fail
from .rule import rule


@rule("trailing-reshapes")
def trailing_reshapes(module: Module, target: DeeployTarget) -> None:
    """A graph output produced by reshape(requant(x)) becomes requant(reshape(x)); any other trailing reshape of an
    int8 tensor (after a fused op: a Conv1d's output lifted to rank 4 and reshaped back) gets a RequantShift that
    only copies (mul = div = u, add 0, or add -u/2 where Deeploy drops a unity requant after a Reshape: floor((u x -
    u/2 + u/2) / u) = x); one of a uint8 tensor on a platform whose standalone RequantShift writes int8 only is
    refused."""
    for out in module.outputs:
        rs = out.operands[0].owner
        if rs.name != "int.reshape":
            continue
        rqs = rs.operands[0].owner
        movable = (rqs.name == "int.requant_shift" and len(rqs.result.uses) == 1 and len(rs.result.uses) == 1
                   and rqs.operands[0].owner.name not in FUSING)
        if not movable:
            _copy_after(module, rs, target)
            continue
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


def _copy_after(module: Module, rs, target: DeeployTarget) -> None:
    """reshape -> graph output  becomes  reshape -> RequantShift that copies -> graph output (see trailing_reshapes)."""
    out = rs.result
    storage = out.type.storage
    if storage.width > 8 or (not storage.signed and target.unsigned_requant_fused):
        raise fail(rs, target, "the graph ends in a reshape (Deeploy leaves such an output buffer zero) that cannot "
                               "move before the last computing op, and the platform has no standalone copy of a "
                               f"{storage.name} tensor: end the model with an int8 quantizer or a layer that "
                               "computes at rank 4 or 2 (a Flatten + Linear head)")
    u = int(max(target.clip_requant_unit, target.requant_div_min))
    # PULPOpen's SkipUnityRequantPass removes mul == div, add == 0 after a Reshape (clip_requant_unit 2 says so)
    add = -(u // 2) if target.clip_requant_unit > 1 else 0
    copy = module.create("int.requant_shift", [out], [out.type],
                         {"mul": np.array([u], np.int64), "add": np.array([add], np.int64), "div": u,
                          "signed": storage.signed, "n_levels": 1 << storage.width}, rs.loc + "/copy",
                         [out.name])
    out.name = None
    module.replace_all_uses(out, copy.result, except_ops=[copy])
