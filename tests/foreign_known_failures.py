"""Cells of the foreign-model matrix (tests/test_foreign_matrix.py) that fail today, with their cause (a `CAUSES`
entry of tests/foreign_models.py, which names the error line it matches).

Fixing a cause makes its cells pass, and the matrix test then fails until their lines are removed here.
Regenerate the list with `python tests/foreign_matrix.py --known FILE` (it writes these lines for the failing cells).
"""

KNOWN_FAILURES = {
    'cnn/pt-u8u8@siracusa': 'siracusa-untiled-pad',
    'cnn/qop-u8u8@siracusa': 'siracusa-untiled-pad',
    'conv1d-gap/pt-u8u8@siracusa': 'siracusa-untiled-pad',
    'conv1d-gap/qop-u8u8@siracusa': 'siracusa-untiled-pad',
    'conv_perchannel/brevitas-qonnx@siracusa': 'trunc-avgpool-qonnx',
    'linear_nobias/brevitas-qdq@cortexm': 'cortexm-per-channel-matmul',
    'linear_nobias/brevitas-qonnx@cortexm': 'cortexm-per-channel-matmul',
    'mobilenetv2-0.35/pt-u8u8@cortexm': 'grouped-conv-weight-zero-point',
    'mobilenetv2-0.35/pt-u8u8@generic': 'grouped-conv-weight-zero-point',
    'mobilenetv2-0.35/pt-u8u8@siracusa': 'grouped-conv-weight-zero-point',
    'mobilenetv3-small/pc-reduce@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pc-u8s8@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pc-u8u8@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pc-w4@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pc-wasym@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pt-u8s8@siracusa': 'siracusa-unsigned-product',
    'mobilenetv3-small/pt-u8u8@cortexm': 'grouped-conv-weight-zero-point',
    'mobilenetv3-small/pt-u8u8@generic': 'grouped-conv-weight-zero-point',
    'mobilenetv3-small/pt-u8u8@siracusa': 'grouped-conv-weight-zero-point',
    'resnet18/pc-reduce@siracusa': 'inaccurate',
    'resnet18/pc-u8s8@siracusa': 'inaccurate',
    'resnet18/pc-u8u8@siracusa': 'inaccurate',
    'resnet18/pc-w4@siracusa': 'inaccurate',
    'resnet18/pc-wasym@siracusa': 'inaccurate',
    'resnet18/pt-actsym@generic': 'pad-overflow',
    'resnet18/pt-actsym@siracusa': 'inaccurate',
    'resnet18/pt-u8s8@siracusa': 'inaccurate',
    'resnet18/pt-u8u8@siracusa': 'siracusa-untiled-pad',
    'shifted_relu_pool/brevitas-qonnx@siracusa': 'trunc-avgpool-qonnx',
}
