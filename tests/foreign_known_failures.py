"""Cells of the foreign-model matrix (tests/test_foreign_matrix.py) that fail today, with their cause (a `CAUSES`
entry of tests/foreign_models.py, which names the error line it matches).

Fixing a cause makes its cells pass, and the matrix test then fails until their lines are removed here.
Regenerate the list with `python tests/foreign_matrix.py --known FILE` (it writes these lines for the failing cells).
"""

KNOWN_FAILURES = {
    'cnn/pt-u8u8@cortexm': 'cortexm-weight-zero-point',
    'cnn/qop-u8u8@cortexm': 'cortexm-weight-zero-point',
    'concat/pc-dynbatch@cortexm': 'cortexm-concat',
    'concat/pc-pre@cortexm': 'cortexm-concat',
    'concat/pc-reduce@cortexm': 'cortexm-concat',
    'concat/pc-s8s8@cortexm': 'cortexm-concat',
    'concat/pc-u8s8@cortexm': 'cortexm-concat',
    'concat/pc-u8u8@cortexm': 'cortexm-concat',
    'concat/pc-w4@cortexm': 'cortexm-concat',
    'concat/pc-wasym@cortexm': 'cortexm-concat',
    'concat/pt-actsym@cortexm': 'cortexm-concat',
    'concat/pt-s8s8@cortexm': 'cortexm-concat',
    'concat/pt-u8s8@cortexm': 'cortexm-concat',
    'concat/pt-u8u8@cortexm': 'cortexm-weight-zero-point',
    'concat/qop-pc@cortexm': 'cortexm-concat',
    'concat/qop-pt@cortexm': 'cortexm-concat',
    'concat/qop-u8u8@cortexm': 'cortexm-weight-zero-point',
    'conv1d-flatten/pt-u8u8@cortexm': 'cortexm-weight-zero-point',
    'conv1d-flatten/qop-u8u8@cortexm': 'cortexm-weight-zero-point',
    'conv1d-gap/pt-u8u8@cortexm': 'cortexm-weight-zero-point',
    'conv1d-gap/qop-u8u8@cortexm': 'cortexm-weight-zero-point',
    'int4_relu4/brevitas-qdq@cortexm': 'inaccurate',
    'int4_relu4/brevitas-qonnx@cortexm': 'inaccurate',
    'mlp/pt-u8u8@cortexm': 'cortexm-weight-zero-point',
    'mlp/qop-u8u8@cortexm': 'cortexm-weight-zero-point',
    'resnet18/pt-u8s8@siracusa': 'inaccurate',
}
