"""agents.calculator: arithmetic without eval."""

import pytest

from agents.calculator import InvalidExpression, evaluate


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
