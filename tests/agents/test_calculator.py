"""agents.calculator: arithmetic without eval."""

import ast
import math
import time

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from agents.calculator import INT_BITS_MAX, NODES_MAX, InvalidExpression, evaluate
from tests.hostile import big_strings, hostile_text


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2*(3+4)", 14),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-2**2", -4),
        ("(-2)**2", 4),
        ("7/2", 3.5),
        ("6/3", 2),
        ("7//2", 3),
        ("7 % 4", 3),
        ("+5 - -5", 10),
        ("2**-1", 0.5),
        ("0.1 + 0.2", 0.1 + 0.2),
        ("10**100", 10**100),
    ],
)
def test_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


def test_whole_results_are_integers() -> None:
    assert type(evaluate("6/3")) is int


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "The expression is empty."),
        ("2*(3+", "is not a valid arithmetic expression"),
        ("1 + \ud800", "is not a valid arithmetic expression"),
        ("__import__('os').system('true')", "Unsupported syntax"),
        ("abs(-1)", "Unsupported syntax"),
        ("x + 1", "Unsupported syntax"),
        ("(1).real", "Unsupported syntax"),
        ("'a' * 3", "Unsupported syntax"),
        ("True + 1", "Unsupported syntax"),
        ("1 if 1 else 2", "Unsupported syntax"),
        ("[1, 2]", "Unsupported syntax"),
        ("1 < 2", "Unsupported syntax"),
        ("1/0", "Division by zero."),
        ("5 % 0", "Division by zero."),
        ("9**9**9", "Exponents are limited to 10000."),
        ("(10**1000)**5000", "The result is too large."),
        ("1e308 * 10", "The result is too large."),
        ("1e999", "The result is too large."),
        ("-1e999 + 1", "The result is too large."),
        ("(-8) ** 0.5", "The result is not a real number."),
        ("1+" * 300 + "1", "longer than 500 characters"),
        ("-" * 150 + "1", "too complex"),
    ],
)
def test_refused_expressions_say_why(expression: str, message: str) -> None:
    with pytest.raises(InvalidExpression) as error:
        evaluate(expression)
    assert message in str(error.value)


# Properties.

TOKENS = ["0", "1", "2", "9", "10", "0.5", "1e308", "1e999", "9" * 100, "1_0", "0x1f", "1j", ".", "e", "_", "x"]
TOKENS += ["+", "-", "*", "/", "//", "%", "**", "(", ")", " ", ",", "True", "()", "[]", "lambda:", "\x00"]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)
# Well-formed arithmetic with no bounds on its values: towers of powers, huge literals, tiny floats.
wild_numbers = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(["9" * 400, "1e308", "1e-308", "5e-324", "0.1", "2", "10", "0", "0.0"]),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
)
wild_arithmetic = st.recursive(
    wild_numbers,
    lambda children: st.one_of(
        st.builds(
            lambda left, op, right: f"({left}){op}({right})",
            children,
            st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]),
            children,
        ),
        children.map("-{}".format),
    ),
    max_leaves=10,
)
# Refusals must come before the work: 9**9**9 computed would take hours, 2**2**2**2**2 minutes.
WORK_MAX_SECONDS = 1.0


@example("9**9**9")
@example("2**2**2**2**2")
@example("(10**1000)**5000")
@example("(2**4000)*(2**4000)")
@example("2**4096")
@example("1e999")
@example("-1e999")
@example("1e308*1e308")
@example("(" * 199 + "1" + ")" * 199)
@example("(" * 240 + "1" + ")" * 240)
@example("-" * 499 + "1")
@settings(max_examples=500)
@given(expression=wild_arithmetic | token_soup | hostile_text | big_strings(max_size=600))
def test_any_text_is_a_finite_number_or_invalid_expression_quickly(expression: str) -> None:
    """The documented outcomes only: a finite int or float within the size limit, or ``InvalidExpression``."""
    started = time.perf_counter()
    try:
        value = evaluate(expression)
    except InvalidExpression as exc:
        event("refused")
        assert str(exc)
    else:
        event("a number")
        assert type(value) in (int, float)
        assert math.isfinite(value) if isinstance(value, float) else value.bit_length() <= INT_BITS_MAX
    assert time.perf_counter() - started < WORK_MAX_SECONDS


numbers = st.integers(min_value=0, max_value=10).map(str)
# Powers do not nest, so every value stays far inside the calculator's limits.
powers = st.builds(
    lambda base, exponent: f"{base}**{exponent}", numbers | numbers.map("(-{})".format), st.integers(-1, 3)
)
OPERATORS = ["+", "-", "*", "/", "//", "%"]
arithmetic = st.recursive(
    numbers | powers,
    lambda children: st.one_of(
        st.builds(lambda left, op, right: f"{left} {op} {right}", children, st.sampled_from(OPERATORS), children),
        children.map("({})".format),
        children.map("-{}".format),
    ),
    max_leaves=8,
)


@settings(max_examples=500)
@given(expression=arithmetic)
def test_arithmetic_gives_what_python_gives(expression: str) -> None:
    """The same value as Python's own evaluation of the same text, float rounding included.

    Exact equality holds because the calculator applies Python's operators in
    the order of Python's own parse; a whole float comes back as an int.
    """
    assume(sum(1 for _ in ast.walk(ast.parse(expression, mode="eval"))) <= NODES_MAX)
    assert set(expression) <= set("0123456789+-*/%() ")
    try:
        expected = eval(expression, {"__builtins__": {}})  # noqa: S307  # Digits, operators and parentheses only.
    except ZeroDivisionError:
        event("division by zero")
        with pytest.raises(InvalidExpression, match=r"^Division by zero\.$"):
            evaluate(expression)
        return
    event(f"a {type(expected).__name__}")
    value = evaluate(expression)
    assert value == expected
    assert type(value) is (int if float(expected).is_integer() else float)
