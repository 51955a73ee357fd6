"""Which notebook names a %%fsq cell reads (shipped) and assigns (brought back): the 23 cases of the design."""

from __future__ import annotations

import builtins

import pytest

from fs_task_queue.jupyter.names import analyse

CASES = {
    "x = a + 1\ny = x * 2": {"a"},
    "x = x + 1": {"x"},
    "total += 1": {"total"},
    "for i in range(n):\n    total += i": {"n", "total"},
    "if c:\n    y = 1\nprint(y)": {"c", "y"},
    "if c:\n    y = 1\nelse:\n    y = 2\nprint(y)": {"c"},
    "[i * k for i in items]": {"items", "k"},
    "def f(a):\n    return a + g(b)\nf(1)": {"g", "b"},
    "def f():\n    return helper()\ndef helper():\n    return z\nf()": {"z"},
    "import numpy as np\nnp.zeros(n)": {"n"},
    "class A:\n    k = 1\n    def m(self):\n        return k\nA().m()": {"k"},
    "def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner\n": {"w"},
    "with open(p) as fh:\n    data = fh.read()\nlen(data)": {"p"},
    "[y := v for v in vals]\nprint(y)": {"vals", "y"},
    "del q\nq": {"q"},
    "f = lambda: t": {"t"},
    "def f():\n    global cnt\n    cnt += 1\nf()": {"cnt"},
    "try:\n    r = 1\nexcept E as e:\n    print(e)\nr": {"E", "r"},
    "@deco(opt)\ndef f(x=dflt) -> T:\n    pass": {"deco", "opt", "dflt", "T"},
    "class B(Base, metaclass=M):\n    attr = val\n": {"Base", "M", "val"},
    "while n > 0:\n    n -= 1": {"n"},
    "(w := 3)\nw + 1": set(),
    "match cmd:\n    case [x, y]:\n        z = x\n    case _:\n        z = 0\nz": {"cmd", "z"},
}


@pytest.mark.parametrize("source", list(CASES), ids=range(len(CASES)))
def test_reads(source: str) -> None:
    got = {n for n in analyse(source).reads if n not in vars(builtins)}
    assert got == CASES[source]


def test_assigns() -> None:
    source = "x, (y, *z) = 1, (2, 3)\nfor i in r: pass\ndef f(): pass\nimport os.path\nif c: k = 1\n"
    source += "def g():\n    global gl\n    gl = 1\n[w := 1 for _ in r]\nclass C: pass\n"
    assert analyse(source).assigns == {"x", "y", "z", "i", "f", "os", "k", "g", "gl", "w", "C"}


def test_syntax_error_is_raised() -> None:
    with pytest.raises(SyntaxError):
        analyse("x = (")


def test_a_cell_result_shows_names_not_pickled_bytes() -> None:
    from fs_task_queue.jupyter.cellrun import CellResult

    result = CellResult(values={"squares": b"\x80\x05..."}, modules={"np": "numpy"}, last=b"\x80\x05", has_last=True)
    text = repr(result)
    assert "squares" in text and "np" in text and "last value" in text and "\\x80" not in text
