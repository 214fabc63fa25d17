"""House limits on the package's shape: function length and parameter count, read from the source with ast.

A function past the limit usually holds two ideas; a CLI entry point with dozens of parameters should take a
config object instead. The failure lists the offenders, longest first, so the fix starts with the worst.
"""
import ast
from pathlib import Path

import selectune

PACKAGE = Path(selectune.__file__).parent
MAX_LINES = 80
MAX_PARAMETERS = 12


def function_shapes() -> list[tuple[int, int, str]]:
    """(lines, parameters, "path:line name") for every function and method in selectune/."""
    shapes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                count -= bool(args.args and args.args[0].arg in ("self", "cls"))
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                shapes.append((node.end_lineno - node.lineno + 1, count, where))
    return shapes


def test_the_scan_sees_every_function():
    shapes = function_shapes()
    names = {where.split(" ")[1] for _, _, where in shapes}
    assert len(shapes) > 500 and {"train", "select", "save_delta", "gate"} <= names


def test_no_function_is_longer_than_the_limit():
    shapes = sorted(function_shapes(), reverse=True)
    print("longest functions:", *(f"{n} lines  {where}" for n, _, where in shapes[:5]), sep="\n  ")
    too_long = [f"{n} lines  {where}" for n, _, where in shapes if n > MAX_LINES]
    assert not too_long, f"functions over {MAX_LINES} lines (split them):\n" + "\n".join(too_long)


def test_no_function_takes_more_than_the_limit_of_parameters():
    shapes = sorted(function_shapes(), key=lambda s: -s[1])
    print("most parameters:", *(f"{p} parameters  {where}" for _, p, where in shapes[:5]), sep="\n  ")
    too_many = [f"{p} parameters  {where}" for _, p, where in shapes if p > MAX_PARAMETERS]
    assert not too_many, f"functions with over {MAX_PARAMETERS} parameters (take a config object):\n" + "\n".join(too_many)
