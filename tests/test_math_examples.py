"""The `example` blocks of docs/math.md section 9, recomputed by the oracle.

Each block is read from the file itself: ``scores``, ``y`` and ``options``
are the inputs (``log(...)`` allowed), ``loss`` and ``dscores`` the expected
outputs, each number to the digits it is written with (at least 7 decimals). Editing a digit of the
doc makes these tests fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from _oracle import oracle_softmax_loss

MATH = Path(__file__).resolve().parent.parent / "docs" / "math.md"
BLOCK = re.compile(r"^```example (?P<name>[^\n]+)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"-?\d+(?:\.(\d+))?")
EXPECTED = {"probabilities", "K-dim", "z-loss", "z-loss with weights", "softcap"}


def examples(text: str) -> dict[str, dict[str, str]]:
    """``{name: {key: expression text}}`` for every ```example block of ``text``."""
    found = {}
    for match in BLOCK.finditer(text):
        lines = [line.split("=", 1) for line in match["body"].splitlines() if line.strip()]
        found[match["name"].strip()] = {key.strip(): value.strip() for key, value in lines}
    return found


def assert_as_written(actual: np.ndarray, written: str, what: str) -> None:
    """``actual`` equals the literal ``written`` to half a unit of each number's last digit.

    Numbers with fewer than 7 decimals (``-0.25``) claim to be exact, so they are held to 7 too.
    """
    expected = np.asarray(ast.literal_eval(written), dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, the doc has {expected.shape}"
    decimals = [len(frac or "") for frac in NUMBER.findall(written)]
    assert len(decimals) == expected.size
    tol = 0.5 * 10.0 ** -np.maximum(decimals, 7).astype(np.float64) + 1e-12
    err = np.abs(actual.ravel() - expected.ravel())
    assert np.all(err <= tol), f"{what}: oracle {actual.ravel()}, docs/math.md {expected.ravel()}"


def check(block: dict[str, str], compute=oracle_softmax_loss) -> None:
    """Recompute one example (with the oracle, or ``compute``) and compare it with its written outputs."""
    names = {"__builtins__": {}, "log": np.log}
    scores = np.asarray(eval(block["scores"], names), dtype=np.float64)  # noqa: S307  (our own doc)
    y = np.asarray(ast.literal_eval(block["y"]))
    options = ast.literal_eval(block["options"])
    options = {k: np.asarray(v) if isinstance(v, list) else v for k, v in options.items()}
    loss, dscores = compute(scores, y, **options)
    assert_as_written(np.asarray(loss), block["loss"], "loss")
    assert_as_written(np.asarray(dscores), block["dscores"], "dscores")


DOC_EXAMPLES = examples(MATH.read_text(encoding="utf-8"))


def test_every_section_9_example_is_present():
    assert EXPECTED <= set(DOC_EXAMPLES), f"missing in docs/math.md: {EXPECTED - set(DOC_EXAMPLES)}"


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_example(name):
    check(DOC_EXAMPLES[name])


@pytest.mark.parametrize("engine", ["reference", "fused"])
@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_example_with_the_library(name, engine):
    """The library's engines print the doc's numbers too, not only the oracle."""
    import xsoftmax as xs

    check(DOC_EXAMPLES[name], lambda s, y, **kw: xs.softmax_loss(s, y, engine=engine, **kw))


@pytest.mark.parametrize("key,index", [("loss", 0), ("dscores", 0), ("dscores", 4)])
def test_a_wrong_digit_fails(key, index):
    """The check is not vacuous: one digit changed in a written output is caught."""
    block = dict(DOC_EXAMPLES["z-loss with weights"])
    spans = [m.span() for m in re.finditer(r"\d(?=[,\]\s]|$)", block[key])]  # last digit of each number
    start, end = spans[index]
    digit = block[key][start]
    block[key] = block[key][:start] + str((int(digit) + 3) % 10) + block[key][end:]
    with pytest.raises(AssertionError, match=key):
        check(block)
