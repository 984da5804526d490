"""Cells of the foreign-model matrix (tests/test_foreign_matrix.py) that fail today, with their cause (a `CAUSES`
entry of tests/foreign_models.py, which names the error line it matches).

Fixing a cause makes its cells pass, and the matrix test then fails until their lines are removed here.
Regenerate the list with `python tests/foreign_matrix.py --known FILE` (it writes these lines for the failing cells);
it covers the whole matrix, which the slow suite runs.  Today: the
depthwise convs of the MobileNets with QUInt8 per-tensor weights have no exact integer form for their zero points.
(ResNet-18 on Siracusa, 5-7 steps off while RequantizedAdd rounded the smaller-scale operand and the zero-point
constant of its 8 residual adds to whole steps, is now within the bound: 3-4 steps, as on generic, with the stacked
depthwise form of docs/targets.md.)
"""

KNOWN_FAILURES = {
    'mobilenetv2-0.35/pt-u8u8@cortexm': 'grouped-weight-zero-point',
    'mobilenetv2-0.35/pt-u8u8@generic': 'grouped-weight-zero-point',
    'mobilenetv2-0.35/pt-u8u8@siracusa': 'grouped-weight-zero-point',
    'mobilenetv3-small/pt-u8u8@cortexm': 'grouped-weight-zero-point',
    'mobilenetv3-small/pt-u8u8@generic': 'grouped-weight-zero-point',
    'mobilenetv3-small/pt-u8u8@siracusa': 'grouped-weight-zero-point',
}
