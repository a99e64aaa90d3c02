"""Evaluate arithmetic safely: a whitelist walk over Python's AST, never ``eval``."""

import ast
import math
import operator
from collections.abc import Callable

from .exceptions import ToolError

EXPRESSION_MAX_CHARS = 500
NODES_MAX = 200
INT_BITS_MAX = 4096  # About 1,200 decimal digits.
EXPONENT_MAX = 10_000

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class InvalidExpression(ToolError, ValueError):
    """The expression is not arithmetic this calculator accepts, or has no finite value."""


def evaluate(expression: str) -> Number:
    """Return the value of an arithmetic expression such as ``2*(3+4)``.

    Numbers, parentheses, unary + and -, and + - * / // % ** only. A float
    with a whole value is returned as an int (``6/3`` is ``2``).
    """
    if not expression.strip():
        raise InvalidExpression("The expression is empty.")
    if len(expression) > EXPRESSION_MAX_CHARS:
        raise InvalidExpression(f"The expression is longer than {EXPRESSION_MAX_CHARS} characters.")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError):  # ValueError: text with a lone surrogate cannot even be encoded.
        raise InvalidExpression(f"{expression!r} is not a valid arithmetic expression.") from None
    if sum(1 for _ in ast.walk(tree)) > NODES_MAX:
        raise InvalidExpression("The expression is too complex.")
    value = _value(tree.body)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _value(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: Number = node.value  # type: ignore[assignment]
        return _checked(value)  # A literal such as 1e999 is already infinite.
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > EXPONENT_MAX:
                raise InvalidExpression(f"Exponents are limited to {EXPONENT_MAX}.")
            # Refuse before computing: an int power's size is known up front.
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > INT_BITS_MAX:
                raise InvalidExpression("The result is too large.")
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise InvalidExpression("Division by zero.") from None
        except OverflowError:
            raise InvalidExpression("The result is too large.") from None
    raise InvalidExpression(f"Unsupported syntax: {ast.unparse(node)[:60]!r}; use numbers and + - * / // % ** ( ).")


def _checked(value: Number | complex) -> Number:
    if isinstance(value, complex):
        raise InvalidExpression("The result is not a real number.")
    if isinstance(value, int) and value.bit_length() > INT_BITS_MAX:
        raise InvalidExpression("The result is too large.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidExpression("The result is too large.")
    return value
