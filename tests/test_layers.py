"""The package's layers: no import circle, commands import no command, nothing below imports them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ensemble"
# a module may import only from its own layer or the layers before it
LAYERS = [
    # (the package folders fuse/, evaluate/, deploy/ hold modules of several layers: listed by module)
    {"errors", "atomic", "hashing", "checkpoint", "device", "distributed", "progress",
     "fuse", "evaluate", "deploy", "gallery"},
    {"config"},
    {"data", "models.preprocess"},  # the one resize + normalise of training, eval and exports
    {"models", "losses", "tasks"},
    {"embed", "fuse.graph", "fuse.combine", "fuse.reducer", "fuse.learned", "evaluate.metrics", "evaluate.report",
     "evaluate.model", "evaluate.html", "deploy.torchscript", "deploy.onnx", "deploy.exported", "gallery.store"},
    {"workspace"},
    {"train", "fuse.fit", "fuse.config", "evaluate.run", "evaluate.provenance", "deploy.export", "budget",
     "gallery.build"},
    {"commands"},
    {"cli"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """ensemble modules imported anywhere in the file (function-level imports included)."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if (PACKAGE / target.replace(".", "/") / f"{a.name}.py").exists())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ensemble"):
            found.add(node.module.removeprefix("ensemble").lstrip("."))
    return {f for f in found if f}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    assert best is not None, f"ensemble.{module} is in no layer of tests/test_layers.py"
    return best[0]


def test_every_module_is_in_a_layer():
    for module in GRAPH:
        if module:
            layer_of(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m))
def test_imports_only_its_layer_or_below(module):
    up = sorted(t for t in GRAPH[module] if t in GRAPH and t and layer_of(t) > layer_of(module))
    assert not up, f"ensemble.{module} (layer {layer_of(module)}) imports higher layers: {up}"


def test_commands_import_no_other_command():
    for module, targets in GRAPH.items():
        if module.startswith("commands."):
            others = sorted(t for t in targets if t.startswith("commands.") and t != module)
            assert not others, f"{module} imports {others}"


def test_no_import_circle():
    seen, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module in seen:
            return
        stack.append(module)
        for target in GRAPH.get(module, ()):
            if target in GRAPH and target != module and not module.startswith(target + ".") and target:
                visit(target)
        stack.pop()
        seen.add(module)

    for module in GRAPH:
        visit(module)


def test_package_import_loads_no_command_module():
    code = "import sys, ensemble, ensemble.cli; print(sorted(m for m in sys.modules if m.startswith('ensemble.commands')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
