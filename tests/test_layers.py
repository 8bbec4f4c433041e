"""The import rule of docs/architecture.md, checked on the source: every sfmkit module imports only
from its own package or from packages in lower layers, and the packages form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sfmkit"

#: Lowest first. A package may import its own modules and any package of a lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "utils"),
    ("io",),
    ("models",),
    (
        "features",
        "matching",
        "geometry",
        "refinement",
        "reconstruction",
        "retrieval",
        "labels",
        "synth",
        "localize",
    ),
    ("train",),
    ("pipelines",),
    ("eval",),
    ("cli",),
]
LAYER = {package: i for i, packages in enumerate(LAYERS) for package in packages}
#: Packages of one layer may import each other only in this direction (stage packages that
#: build on another one); anything else between them is reported.
SAME_LAYER = {
    ("features", "retrieval"),  # global descriptors aggregate conv5 maps as retrieval does
    ("matching", "features"),  # the matcher asks the feature registry whether features are dense
    ("matching", "geometry"),  # scale search scores pyramid level pairs by a homography fit
}


def package_of(module: str) -> str:
    """``sfmkit.io.h5`` -> ``io``; ``sfmkit.errors`` -> ``errors``; ``sfmkit`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sfmkit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every ``import sfmkit...`` / ``from sfmkit... import`` in the
    file, those inside functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sfmkit"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sfmkit":
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; write the full sfmkit path")
            found.append((node.lineno, node.module))
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> where, for every cross-package import."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = package_of(module_name(path))
        for line, target_module in sfmkit_imports(path):
            target = package_of(target_module)
            if target and target != source and source not in ("", "__main__"):
                edges.setdefault((source, target), []).append(f"{path.relative_to(ROOT.parent)}:{line}")
    return edges


def layering_violations(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    out = []
    for (source, target), where in sorted(edges.items()):
        if source not in LAYER or target not in LAYER:
            out.append(f"{source} -> {target}: package not in LAYERS ({where[0]})")
        elif LAYER[target] > LAYER[source]:
            out.append(f"{source} (layer {LAYER[source]}) imports {target} (layer {LAYER[target]}): {where}")
        elif LAYER[target] == LAYER[source] and (source, target) not in SAME_LAYER and LAYER[source] > 0:
            out.append(f"{source} imports {target} of the same layer, not an allowed direction: {where}")
    return out


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Cycles of the package graph (depth-first search; each reported once per start)."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__", "__main__"}
    assert packages | modules == set(LAYER), "add new packages to LAYERS and docs/architecture.md"


def test_no_import_from_a_higher_layer():
    assert layering_violations(package_edges()) == []


def test_no_package_cycle():
    assert cycles(package_edges()) == []


def test_the_checks_catch_violations():
    # models importing a stage package, and a cycle between two stage packages
    fake = {
        ("models", "features"): ["x.py:1"],
        ("synth", "labels"): ["y.py:1"],
        ("labels", "synth"): ["z.py:1"],
    }
    problems = layering_violations(fake)
    assert any(p.startswith("models (layer 2) imports features") for p in problems)
    assert any("synth imports labels of the same layer" in p for p in problems)
    assert cycles(fake) == [["labels", "synth", "labels"]]
