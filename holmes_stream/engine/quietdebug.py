"""Copies of library functions without their debug log lines' f-strings.

Two debug lines format a whole conversation on every LLM call, logged or not (an f-string is
built before the logger looks at its level): HolmesGPT's ``call_stream`` writes
``logging.debug(f"sending messages={messages}\\n\\ntools={tools}")`` before each request, and
litellm's ``get_optional_params`` writes the parameters it was passed (the messages and the tool
schemas among them) and those it keeps. Measured in a worker's profile: 4 % of its CPU.

``without_debug_fstrings`` recompiles a function from its source with each statement
``<logger>.debug(f"...")`` replaced by ``pass``: same globals, defaults, file and line numbers,
nothing else changed (``tests/test_engine_quietdebug.py`` compares the syntax trees and names
the lines removed, so a library change that moves or adds one fails there). The copies are used
only while the logger they would write to does not log debug messages, and (like every
``fastpath`` wrapper) only for our own LLMs' calls.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import logging
import textwrap
from collections.abc import Callable
from typing import Any

# The compiler flags of ``from __future__`` imports: a copy is compiled with its module's.
_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag


log = logging.getLogger(__name__)


class Unsupported(Exception):
    """The function cannot be copied this way (decorated, a closure, a mangled name)."""


def _is_debug_fstring(node: ast.AST, loggers: frozenset[str]) -> bool:
    if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
        return False
    call = node.value
    target = call.func
    return (
        isinstance(target, ast.Attribute)
        and target.attr == "debug"
        and isinstance(target.value, ast.Name)
        and target.value.id in loggers
        and bool(call.args)
        and isinstance(call.args[0], ast.JoinedStr)
    )


class _Strip(ast.NodeTransformer):
    def __init__(self, loggers: frozenset[str]) -> None:
        self.loggers = loggers
        self.removed: list[int] = []

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if _is_debug_fstring(node, self.loggers):
            self.removed.append(node.lineno)
            return ast.copy_location(ast.Pass(), node)
        return node


def function_tree(func: Callable[..., Any]) -> ast.FunctionDef:
    """The function's definition as parsed from its source, with the file's line numbers."""
    source = textwrap.dedent(inspect.getsource(func))
    tree = ast.parse(source)
    ast.increment_lineno(tree, func.__code__.co_firstlineno - 1)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef) or node.name != func.__name__:
        raise Unsupported(f"{func.__qualname__}: not a plain function definition")
    return node


def without_debug_fstrings(
    func: Callable[..., Any], loggers: frozenset[str]
) -> tuple[Callable[..., Any], list[int]]:
    """``func`` without its ``<logger>.debug(f"...")`` statements (``loggers``: the names the
    logger goes by in its module), and the line numbers of those removed."""
    if func.__closure__:
        raise Unsupported(f"{func.__qualname__} is a closure")
    node = function_tree(func)
    if node.decorator_list:
        raise Unsupported(f"{func.__qualname__} is decorated")
    # A method's private names are mangled with its class's name, which a copy compiled
    # outside the class would not do.
    names = (
        n.attr if isinstance(n, ast.Attribute) else n.id
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute | ast.Name)
    )
    if any(name.startswith("__") and not name.endswith("__") for name in names):
        raise Unsupported(f"{func.__qualname__} uses private (mangled) names")
    strip = _Strip(loggers)
    module = ast.fix_missing_locations(ast.Module(body=[strip.visit(node)], type_ignores=[]))
    namespace: dict[str, Any] = {}
    flags = func.__code__.co_flags & _FUTURE_FLAGS
    code = compile(module, func.__code__.co_filename, "exec", flags=flags, dont_inherit=True)
    exec(code, func.__globals__, namespace)
    copy = namespace[func.__name__]
    copy.__defaults__ = func.__defaults__
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    copy.__doc__ = func.__doc__
    return copy, strip.removed


def when_quiet(
    original: Callable[..., Any], copy: Callable[..., Any], logger: logging.Logger
) -> Callable[..., Any]:
    """Calls ``copy`` while ``logger`` drops debug messages, else ``original``."""

    def chosen(*args: Any, **kwargs: Any) -> Any:
        if logger.isEnabledFor(logging.DEBUG):
            return original(*args, **kwargs)
        return copy(*args, **kwargs)

    return chosen


def quiet(
    original: Callable[..., Any], loggers: frozenset[str], logger: logging.Logger
) -> Callable[..., Any] | None:
    """``when_quiet`` of ``original`` and its copy without debug f-strings; None (logged) when
    no copy can be made, for the caller to keep ``original``."""
    try:
        copy, _ = without_debug_fstrings(original, loggers)
    except (Unsupported, OSError, SyntaxError) as exc:
        log.warning("quietdebug: %s; its debug lines are formatted as usual", exc)
        return None
    return when_quiet(original, copy, logger)
