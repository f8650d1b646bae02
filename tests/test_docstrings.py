"""Every public name of `xmc_core` has a docstring that says something about its inputs (issue 27).

Public API, per module `xmc_core.<m>`: the names in its `__all__`, else the names not starting
with "_" that the module itself defines (functions and classes, not imports); for each public
class, the public methods, properties, classmethods and staticmethods defined in the class body
itself (no dunders, nothing inherited). Checks:

- every public function, class, method and property has a docstring (a dataclass's generated
  "Name(field: type, ...)" signature is not one);
- a dataclass's docstring names each of its fields (its Attributes / fields section);
- a public constant (a module-level value that is not a function or class) has a Sphinx
  ``#:`` comment on the line(s) just above its assignment, or a string statement just below it;
- a function or method with parameters other than self/cls names at least one of them in its
  docstring (properties are exempt), so "Train the model." on `train(X, Y, params)` fails;
- the core algorithm entry points (`ENTRY_POINTS`) have a "Returns" section, a shape or dtype
  word (`SHAPE_WORDS`), and a "Raises" section when their body has a `raise` statement.

The style is Google style (Args / Returns / Raises / Source sections), see the package's
docstrings; the test checks the content above, not the layout. It runs in a few seconds: the
modules are imported once (torch included) and only their own source is parsed.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap

import pytest

import xmc_core
from conftest import missing

MODULES = sorted(m.name for m in pkgutil.iter_modules(xmc_core.__path__))

#: Core algorithm entry points ("module.qualname"): need Returns, a shape/dtype word and, when
#: the body raises, Raises.
ENTRY_POINTS = (
    "tree.build_tree",
    "tree.binary_codes",
    "label_embedding.pifa",
    "xlinear.XLinearModel.train",
    "xlinear.XLinearModel.predict",
    "xlinear.solve_squared_hinge",
    "xlinear.solve_squared_hinge_dcd",
    "kernels.dcd_squared_hinge",
    "kernels.balanced_2means",
    "metrics.ranking_metrics",
    "metrics.topk_indices",
    "metrics.inverse_propensity",
    "metrics.set_metrics",
    "tfidf.TfidfVectorizer.fit_transform",
    "tfidf.TfidfVectorizer.transform",
    "model.train_xr_linear",
    "model.fit_rankers",
    "model.XmcModel.predict",
    "model.evaluate_model",
    "xtransformer.train_xr_transformer",
    "xtransformer.XTransformerModel.predict",
    "xlgen.train_xlgen",
    "xlgen.XLGenModel.predict",
    "disentangle.disentangle_tree",
    "encoder.encode",
    "data.load_dataset",
    "synth.generate",
)

SHAPE_WORDS = ("float32", "CSR", "N x", "×")


def _module(name: str):
    try:
        return importlib.import_module(f"xmc_core.{name}")
    except ModuleNotFoundError as exc:  # an optional dependency (torch, transformers, ...) absent
        if exc.name and exc.name.split(".")[0] != "xmc_core":
            missing(f"xmc_core.{name} needs {exc.name}")
        raise


def _public_names(mod) -> list[str]:
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return [n for n, v in vars(mod).items()
            if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
            and getattr(v, "__module__", None) == mod.__name__]


def _members(cls):
    """(name, function or property, kind) of the public members defined in the class body."""
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, property):
            yield name, attr, "property"
        elif isinstance(attr, (classmethod, staticmethod)):
            yield name, attr.__func__, "method"
        elif inspect.isfunction(attr):
            yield name, attr, "method"


def _class_doc(cls) -> str:
    doc = vars(cls).get("__doc__") or ""
    if dataclasses.is_dataclass(cls) and doc.startswith(cls.__name__ + "("):
        return ""  # the signature dataclasses puts there when the class has none
    return doc


def _params(func) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def _names_any(doc: str, names: list[str]) -> bool:
    return any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", doc) for n in names)


def _raises(func) -> bool:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(isinstance(node, ast.Raise) for node in ast.walk(tree))


def _constant_documented(mod, name: str) -> bool:
    """A `#:` comment above the module-level assignment of `name`, or a string just below it."""
    try:
        source = inspect.getsource(mod)
    except OSError:
        return False
    lines = source.splitlines()
    body = ast.parse(source).body
    for i, node in enumerate(body):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        below = body[i + 1] if i + 1 < len(body) else None
        if above.startswith("#:") or (isinstance(below, ast.Expr) and isinstance(below.value, ast.Constant)
                                      and isinstance(below.value.value, str)):
            return True
    return False


def problems(module_name: str) -> list[str]:
    """Every docstring problem of the public API of `xmc_core.<module_name>`, one line each."""
    mod = _module(module_name)
    out = []

    def check_callable(qual: str, func, doc: str):
        params = _params(func)
        if params and not _names_any(doc, params):
            out.append(f"{qual}: docstring names none of its parameters {params}")
        if f"{module_name}.{qual}" in ENTRY_POINTS:
            if "Returns" not in doc:
                out.append(f"{qual}: entry point without a Returns section")
            if not any(w in doc for w in SHAPE_WORDS):
                out.append(f"{qual}: entry point states no shape or dtype ({' / '.join(SHAPE_WORDS)})")
            if _raises(func) and "Raises" not in doc:
                out.append(f"{qual}: entry point raises but has no Raises section")

    for name in _public_names(mod):
        obj = getattr(mod, name)
        if inspect.isclass(obj):
            doc = _class_doc(obj)
            if not doc.strip():
                out.append(f"{name}: class without a docstring")
            elif dataclasses.is_dataclass(obj):
                own = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
                absent = [f for f in own if not _names_any(doc, [f])]
                if absent:
                    out.append(f"{name}: dataclass docstring does not describe field(s) {absent}")
            for mname, member, kind in _members(obj):
                qual = f"{name}.{mname}"
                mdoc = member.__doc__ or ""
                if not mdoc.strip():
                    out.append(f"{qual}: {kind} without a docstring")
                elif kind == "method":
                    check_callable(qual, member, mdoc)
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            doc = obj.__doc__ or ""
            if not doc.strip():
                out.append(f"{name}: function without a docstring")
            else:
                check_callable(name, obj, doc)
        elif callable(obj) and (getattr(obj, "__doc__", None) or "").strip():
            continue  # e.g. a compiled function (its wrapper carries the docstring)
        elif not _constant_documented(mod, name):
            out.append(f"{name}: constant without a '#:' comment above its assignment")
    for qual in ENTRY_POINTS:
        mname, _, path = qual.partition(".")
        if mname == module_name:
            obj = mod
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                out.append(f"{path}: listed in ENTRY_POINTS but not found")
    return out


@pytest.mark.parametrize("module_name", MODULES)
def test_public_docstrings(module_name):
    found = problems(module_name)
    assert not found, (f"xmc_core.{module_name}: {len(found)} public name(s) with a missing or thin "
                       "docstring:\n  " + "\n  ".join(found))


def test_every_module_is_walked():
    assert {"tree", "xlinear", "tfidf", "metrics", "model", "xtransformer", "xlgen", "disentangle"} <= set(MODULES)
