"""Which notebook names a cell reads, and which it assigns: pure ``ast``, no IPython.

A ``%%fsq`` cell runs on a worker in a namespace made of the values it needs
from the notebook. Shipping too much costs bytes; shipping too little is a
NameError on the worker, so every doubtful case ships:

- inputs are the names read at top level before they are *surely* bound (a
  branch, loop or ``try`` may not bind), plus the module-level names read by
  nested scopes (functions, lambdas, classes, comprehensions) that the cell
  never binds at top level;
- assigns are every name bound at top level (and ``global`` names bound in
  its functions): the candidates to bring back.

``symtable`` is not used: from Python 3.12 it has no comprehension tables
(PEP 709) and it knows nothing of evaluation order.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["CellNames", "analyse"]

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class CellNames:
    """The result of :func:`analyse`."""

    #: Names the cell may read from the notebook namespace.
    reads: frozenset[str]
    #: Names the cell binds at top level (candidates to bring back), in no particular order.
    assigns: frozenset[str]


@dataclass
class _Scope:
    node: ast.AST | None
    parent: _Scope | None
    is_class: bool = False
    binds: set[str] = field(default_factory=set)
    globals_: set[str] = field(default_factory=set)
    nonlocals: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    children: list[_Scope] = field(default_factory=list)


class _Collect(ast.NodeVisitor):
    """Builds the scope tree below one nested scope (function, lambda, class, comprehension)."""

    def __init__(self, scope: _Scope) -> None:
        self.scope = scope

    def _child(self, node: ast.AST, is_class: bool = False) -> _Scope:
        child = _Scope(node, self.scope, is_class)
        self.scope.children.append(child)
        return child

    def visit_Name(self, n: ast.Name) -> None:
        if isinstance(n.ctx, (ast.Store, ast.Del)):
            self.scope.binds.add(n.id)
        else:
            self.scope.loads.append(n.id)

    def visit_Global(self, n: ast.Global) -> None:
        self.scope.globals_.update(n.names)

    def visit_Nonlocal(self, n: ast.Nonlocal) -> None:
        self.scope.nonlocals.update(n.names)

    def visit_AugAssign(self, n: ast.AugAssign) -> None:
        if isinstance(n.target, ast.Name):  # x += 1 reads x
            self.scope.loads.append(n.target.id)
        self.generic_visit(n)

    def visit_alias(self, n: ast.alias) -> None:
        if n.name != "*":
            self.scope.binds.add((n.asname or n.name).split(".")[0])

    def visit_ExceptHandler(self, n: ast.ExceptHandler) -> None:
        if n.name:
            self.scope.binds.add(n.name)
        self.generic_visit(n)

    def visit_MatchAs(self, n: ast.MatchAs) -> None:
        if n.name:
            self.scope.binds.add(n.name)
        self.generic_visit(n)

    def visit_MatchStar(self, n: ast.MatchStar) -> None:
        if n.name:
            self.scope.binds.add(n.name)

    def visit_MatchMapping(self, n: ast.MatchMapping) -> None:
        if n.rest:
            self.scope.binds.add(n.rest)
        self.generic_visit(n)

    def visit_NamedExpr(self, n: ast.NamedExpr) -> None:
        # A walrus in a comprehension binds in the nearest enclosing non-comprehension scope.
        scope = self.scope
        while isinstance(scope.node, _COMPREHENSIONS) and scope.parent is not None:
            scope = scope.parent
        scope.binds.add(n.target.id)
        self.visit(n.value)

    def _function(self, n: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        # Decorators, defaults and annotations are evaluated in the enclosing scope.
        if not isinstance(n, ast.Lambda):
            for d in n.decorator_list:
                self.visit(d)
        a = n.args
        for d in [*a.defaults, *(d for d in a.kw_defaults if d is not None)]:
            self.visit(d)
        params = [x for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None]
        for arg in params:
            if arg.annotation is not None:
                self.visit(arg.annotation)
        if not isinstance(n, ast.Lambda):
            if n.returns is not None:
                self.visit(n.returns)
            self.scope.binds.add(n.name)
        child = self._child(n)
        child.binds.update(x.arg for x in params)
        inner = _Collect(child)
        for stmt in n.body if isinstance(n.body, list) else [n.body]:
            inner.visit(stmt)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function  # type: ignore[assignment]

    def visit_ClassDef(self, n: ast.ClassDef) -> None:
        for d in [*n.decorator_list, *n.bases, *(k.value for k in n.keywords)]:
            self.visit(d)
        self.scope.binds.add(n.name)
        inner = _Collect(self._child(n, is_class=True))
        for stmt in n.body:
            inner.visit(stmt)

    def _comprehension(self, n: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        self.visit(n.generators[0].iter)  # the first iterable is evaluated outside
        inner = _Collect(self._child(n))
        for i, gen in enumerate(n.generators):
            inner.visit(gen.target)
            if i:
                inner.visit(gen.iter)
            for cond in gen.ifs:
                inner.visit(cond)
        for part in ("elt", "key", "value"):
            if hasattr(n, part):
                inner.visit(getattr(n, part))

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension  # type: ignore[assignment]


def _resolves_to_module(scope: _Scope, name: str) -> bool:
    if name in scope.globals_:
        return True
    if name in scope.binds or name in scope.nonlocals:
        return False
    s = scope.parent
    while s is not None and s.parent is not None:  # enclosing function scopes (class scopes are skipped)
        if not s.is_class and name in s.binds and name not in s.globals_:
            return False
        s = s.parent
    return True


def _global_reads(scope: _Scope) -> set[str]:
    """Names that the nested scopes under ``scope`` look up in the module namespace."""
    out: set[str] = set()
    for child in scope.children:
        out.update(name for name in child.loads if _resolves_to_module(child, name))
        out |= _global_reads(child)
    return out


def _declared_globals(scope: _Scope) -> set[str]:
    out: set[str] = set()
    for child in scope.children:
        out |= child.globals_ & child.binds  # `global x; x = ...` in a function assigns x too
        out |= _declared_globals(child)
    return out


class _Flow(ast.NodeVisitor):
    """Walks a cell's top level in evaluation order, tracking the names surely bound so far."""

    def __init__(self) -> None:
        self.bound: set[str] = set()  # surely bound at this point
        self.reads: set[str] = set()  # read while not surely bound: may come from the notebook
        self.binds: set[str] = set()  # bound anywhere at top level
        self.scopes = _Scope(None, None)  # nested scopes, for the module names they read

    def _bind(self, name: str) -> None:
        self.bound.add(name)
        self.binds.add(name)

    def _body(self, stmts: Iterable[ast.AST]) -> None:
        for stmt in stmts:
            self.visit(stmt)

    def visit_Name(self, n: ast.Name) -> None:
        if isinstance(n.ctx, ast.Load):
            if n.id not in self.bound:
                self.reads.add(n.id)
        elif isinstance(n.ctx, ast.Store):
            self._bind(n.id)
        else:
            self.bound.discard(n.id)

    def visit_Assign(self, n: ast.Assign) -> None:
        self.visit(n.value)  # x = x + 1 reads x
        self._body(n.targets)

    def visit_AnnAssign(self, n: ast.AnnAssign) -> None:
        if n.value is not None:
            self.visit(n.value)
            self.visit(n.target)

    def visit_AugAssign(self, n: ast.AugAssign) -> None:
        if isinstance(n.target, ast.Name) and n.target.id not in self.bound:
            self.reads.add(n.target.id)
        self.visit(n.value)
        self.visit(n.target)

    def visit_NamedExpr(self, n: ast.NamedExpr) -> None:
        self.visit(n.value)
        self._bind(n.target.id)

    def visit_alias(self, n: ast.alias) -> None:
        if n.name != "*":
            self._bind((n.asname or n.name).split(".")[0])

    def visit_If(self, n: ast.If) -> None:
        self.visit(n.test)
        before = set(self.bound)
        outs = []
        for body in (n.body, n.orelse):
            self.bound = set(before)
            self._body(body)
            outs.append(self.bound)
        self.bound = outs[0] & outs[1]

    def visit_For(self, n: ast.For | ast.AsyncFor) -> None:
        self.visit(n.iter)
        before = set(self.bound)
        self.visit(n.target)
        self._body([*n.body, *n.orelse])
        self.bound = before  # the loop may not run

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_While(self, n: ast.While) -> None:
        self.visit(n.test)
        before = set(self.bound)
        self._body([*n.body, *n.orelse])
        self.bound = before

    def visit_Try(self, n: ast.Try) -> None:
        before = set(self.bound)
        self._body([*n.body, *n.orelse])
        for h in n.handlers:
            self.bound = set(before)
            if h.type is not None:
                self.visit(h.type)
            if h.name:
                self._bind(h.name)
            self._body(h.body)
        self.bound = before
        self._body(n.finalbody)

    visit_TryStar = visit_Try

    def visit_Match(self, n: ast.Match) -> None:
        self.visit(n.subject)
        before = set(self.bound)
        for case in n.cases:
            self.bound = set(before)
            captures = _Scope(None, None)
            _Collect(captures).visit(case.pattern)
            for name in captures.binds:
                self._bind(name)
            for name in captures.loads:  # value patterns (case Color.RED) read names
                if name not in self.bound:
                    self.reads.add(name)
            if case.guard is not None:
                self.visit(case.guard)
            self._body(case.body)
        self.bound = before

    def _nested(self, n: ast.AST) -> None:
        # Decorators, defaults, bases and the first iterable are evaluated here; bodies are nested scopes.
        holder = _Scope(None, None)
        _Collect(holder).visit(n)
        self.scopes.children += holder.children
        for name in holder.loads:
            if name not in self.bound:
                self.reads.add(name)
        comprehension = isinstance(n, _COMPREHENSIONS)
        for name in holder.binds:  # a def/class name; a walrus in a comprehension only maybe
            self.binds.add(name)
            if not comprehension:
                self.bound.add(name)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _nested  # type: ignore[assignment]
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _nested  # type: ignore[assignment]


def analyse(source: str, filename: str = "<cell>") -> CellNames:
    """The names ``source`` reads and assigns at top level (raises SyntaxError for bad source)."""
    flow = _Flow()
    for stmt in ast.parse(source, filename).body:
        flow.visit(stmt)
    reads = flow.reads | (_global_reads(flow.scopes) - flow.binds)
    return CellNames(frozenset(reads), frozenset(flow.binds | _declared_globals(flow.scopes)))
