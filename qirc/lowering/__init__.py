"""Lowering from the quant-level IR to integer-only arithmetic.

Importing this package registers every lowering pass with `qirc.qir.passes` (one module per pass):
fold-constants, quantize-before-moves, dequant-push, scale-fold, integer-transformer, requant-fusion, add-rescale,
pool-lowering, signed-normalize, strip-quant-boundaries, check-integer-only and the pipeline pass lower-to-int.  The
numeric helpers are `qirc.lowering.numerics` (requant multiplier/shift selection) and `qirc.lowering.ranges` (interval
analysis).
"""
from . import (add_rescale, dequant_push, fold_constants, lower_to_int, pool_lowering,  # noqa: F401
               quantize_before_moves, requant_fusion, scale_fold, signed_normalize, strip_quant_boundaries,
               transformer_ops)
from .lower_to_int import check_integer_only, lower_to_int as lower_module  # noqa: F401
