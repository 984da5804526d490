"""Cells of the foreign-model matrix (tests/test_foreign_matrix.py) that fail today, with their cause (a `CAUSES`
entry of tests/foreign_models.py, which names the error line it matches).

Fixing a cause makes its cells pass, and the matrix test then fails until their lines are removed here.
Regenerate the list with `python tests/foreign_matrix.py --known FILE` (it writes these lines for the failing cells).
"""

KNOWN_FAILURES = {
    'resnet18/pt-u8s8@siracusa': 'inaccurate',
}
