"""Static checks of the em/ package's shape, read with ``ast`` (nothing is imported, so they take no time):

* every public function, method and class has a docstring;
* no module is longer than :data:`MAX_LINES` lines, except data written as code;
* no module builds a path into ``conf/`` to read a YAML there (configs reach code through Hydra).

``python tests/test_docstrings.py`` prints the same findings with counts, as a check script.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Union

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "em"
MAX_LINES = 600
LONG_MODULES_ALLOWED = {"em/data/synthetic.py"}  # data written as code (synthetic dataset families)
# The one definition of the config root (em.paths.CONF_DIR) is allowed; only paths *into* conf/ are not.

Def = Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef]


def modules() -> list[Path]:
    """Every ``.py`` file under em/, sorted; private modules (``_x.py``, not ``__init__.py``) excluded."""
    return sorted(p for p in PACKAGE.rglob("*.py") if not (p.name.startswith("_") and p.name != "__init__.py"))


def rel(path: Path) -> str:
    """``em/...`` path of a module, as the messages print it."""
    return path.relative_to(REPO).as_posix()


def _defs(body: list[ast.stmt]) -> Iterator[Def]:
    """Function and class definitions of a block, looking into if / try / with blocks but not into defs."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, (ast.If, ast.With, ast.AsyncWith)):
            yield from _defs(node.body)
            yield from _defs(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _defs(block)


def _exempt(node: Def) -> bool:
    """Property setters / deleters (documented on the getter) and ``typing.overload`` stubs."""
    for d in getattr(node, "decorator_list", []):
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter"):
            return True
        if (isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload"):
            return True
    return False


def public_defs(tree: ast.Module) -> Iterator[tuple[str, Def]]:
    """(qualified name, node) of each public module-level function / class and each public method or
    nested class of a public class. Names starting with ``_`` (dunders included) and functions nested in
    functions are skipped."""

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, Def]]:
        for node in _defs(body):
            if node.name.startswith("_") or _exempt(node):
                continue
            yield prefix + node.name, node
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{prefix}{node.name}.")

    yield from walk(tree.body, "")


def missing_docstrings(paths: list[Path] | None = None) -> tuple[int, list[str]]:
    """(number of public names, ``file:line name`` of those without a docstring)."""
    total, missing = 0, []
    for path in paths or modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node in public_defs(tree):
            total += 1
            if not ast.get_docstring(node):
                missing.append(f"{rel(path)}:{node.lineno} {name}")
    return total, missing


def long_modules() -> list[str]:
    """``file: N lines`` of each module over MAX_LINES lines, the allowed ones excepted."""
    out = []
    for path in modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel(path) not in LONG_MODULES_ALLOWED:
            out.append(f"{rel(path)}: {n} lines")
    return out


def _code(tree: ast.Module) -> str:
    """The module's code without docstrings and comments (``ast.unparse`` drops comments)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


CONF_ROOT = re.compile(r"""['"]conf['"]|\bCONF_DIR\b""")  # the config root, built here or imported
CONF_JOIN = re.compile(r"""['"]conf['"]\s*/|\bCONF_DIR\s*/""")  # a path joined below it
YAML_READ = re.compile(r"""\.ya?ml\b|OmegaConf\.load\(|yaml\.(safe_)?load\(""")


def conf_yaml_readers() -> list[str]:
    """Modules that build a path into ``conf/`` and read YAML: ``file: why``.

    A simple text check on the code (docstrings and comments removed): the module names the config root
    (a ``"conf"`` string or ``CONF_DIR``) and either joins a path below it (``CONF_DIR / "model"``) or
    touches YAML files (a ``.yaml`` name, ``OmegaConf.load(``, ``yaml.safe_load(``).
    """
    out = []
    for path in modules():
        code = _code(ast.parse(path.read_text(encoding="utf-8")))
        if not CONF_ROOT.search(code):
            continue
        joins, yaml = CONF_JOIN.search(code), YAML_READ.search(code)
        if joins or yaml:
            why = [f"joins a path below conf/ ({joins.group(0)!r})"] if joins else []
            why += [f"reads YAML ({yaml.group(0)!r})"] if yaml else []
            out.append(f"{rel(path)}: " + ", ".join(why))
    return out


# --------------------------------------------------------------------------- tests
def test_every_public_name_has_a_docstring():
    total, missing = missing_docstrings()
    assert not missing, f"{len(missing)} of {total} public functions/classes have no docstring:\n" + "\n".join(missing)


def test_no_module_is_too_long():
    long = long_modules()
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_nothing_reads_conf_yaml_by_path():
    found = conf_yaml_readers()
    assert not found, "modules that read conf/*.yaml by path (compose through Hydra instead):\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checker itself: undocumented public names are found, private / nested / dunder ones are not."""
    src = tmp_path / "m.py"
    src.write_text(
        "def f():\n    def inner(): pass\n"
        "def _g(): pass\n"
        "class C:\n    '''doc'''\n    def __init__(self): pass\n    def m(self): pass\n"
        "    @property\n    def p(self):\n        '''doc'''\n    @p.setter\n    def p(self, v): pass\n"
        "class _D:\n    def m(self): pass\n"
        "if True:\n    def h(): pass\n"
    )
    tree = ast.parse(src.read_text())
    found = sorted(name for name, node in public_defs(tree) if not ast.get_docstring(node))
    assert found == ["C.m", "f", "h"]
    assert CONF_JOIN.search(_code(ast.parse('p = CONF_DIR / "model" / f"{n}.yaml"  # conf/x.yaml')))
    assert not CONF_ROOT.search(_code(ast.parse('"""conf/x.yaml"""\nx = 1  # "conf"')))


if __name__ == "__main__":
    total, missing = missing_docstrings()
    print("\n".join(missing))
    print(f"{len(missing)} of {total} public functions/classes have no docstring")
    print("\n".join(long_modules()) or f"no module over {MAX_LINES} lines")
    print("\n".join(conf_yaml_readers()) or "no module reads conf/*.yaml by path")
