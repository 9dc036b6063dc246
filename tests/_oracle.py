"""The float64 oracle of the tests: ``xsoftmax._cli.oracle``, the one ``xsoftmax check`` uses too.

It is the specification the engines are tested against (formulas in its
module docstring), checked itself against ``torch.nn.functional.cross_entropy``
with autograd in ``tests/test_oracle.py``.
"""

from xsoftmax._cli.oracle import oracle_softmax_loss

__all__ = ["oracle_softmax_loss"]
