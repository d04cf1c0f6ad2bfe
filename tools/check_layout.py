"""Checks the layout the design promises (docs/DESIGN.md §1), from the source text alone:

- the import graph of the project's modules has no circle (imports inside functions count);
- no package imports one above it: official/utils imports only itself; data_prep and official/xception
  import official/utils and themselves, not each other; benchmarks and tools import no tests;
- every module is in exactly one Bazel target's srcs, each test file is a py_test of its own name,
  each target's deps name the targets of the project modules its sources import, and the targets'
  deps have no circle (Bazel refuses to build one).

Usage: python tools/check_layout.py [REPO_ROOT]; prints one line per problem and exits 1 if any.
"""

import ast
import os
import sys

PACKAGES = ("official/utils", "official/xception", "data_prep", "benchmarks", "tests", "tools")
# What each package may import besides itself.
ALLOWED = {
    "official/utils": set(),
    "data_prep": {"official/utils"},
    "official/xception": {"official/utils"},
    "benchmarks": {"official/utils", "official/xception", "data_prep"},
    "tools": {"official/utils", "official/xception", "data_prep"},
    "tests": {"official/utils", "official/xception", "data_prep", "benchmarks", "tools"},
}
_RULES = ("py_library", "py_binary", "py_test")


def package_of(module_path):
    return next((package for package in PACKAGES if module_path.startswith(package + "/")), None)


def project_modules(root):
    """{dotted module name: path relative to root} of every .py file in PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(folder, name), root)
                    dotted = path[:-3].replace(os.sep, ".")
                    modules[dotted[:-len(".__init__")] if name == "__init__.py" else dotted] = path
    return modules


def imports_of(path, modules):
    """The project modules that file `path` imports, anywhere in it."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module; `from module import name` the module.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    # `from a.b import c` lists both a.b.c and a.b; a package __init__ is not a dependency of its own.
    return {name for name in found if not modules[name].endswith("__init__.py")}


def find_cycle(graph):
    """One import circle of `graph` ({module: set of modules}) as a list, or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def read_build_targets(root, package):
    """{label: (rule, srcs, deps)} of the Python rules in `package`/BUILD (Starlark, run as Python)."""
    path = os.path.join(root, package, "BUILD")
    targets = {}
    if not os.path.exists(path):
        return targets

    def rule(kind):
        def record(name, srcs=(), deps=(), **_):
            deps = [f"//{package}:{dep[1:]}" if dep.startswith(":") else dep for dep in deps]
            targets[f"//{package}:{name}"] = (kind, list(srcs), deps)
        return record

    def ignore(*_, **__):
        return None

    names = {kind: rule(kind) for kind in _RULES}
    names.update(package=ignore, sh_binary=ignore, sh_test=ignore, test_suite=ignore,
                 exports_files=ignore, load=ignore, glob=lambda *_, **__: [])
    with open(path, encoding="utf-8") as build:
        exec(compile(build.read(), path, "exec"), names)  # pylint: disable=exec-used
    return targets


def base_is_test(path):
    return package_of(path) == "tests" and os.path.basename(path).startswith("test_")


def check(root):
    """The list of problems (strings) with the layout of the tree at `root`."""
    problems = []
    modules = project_modules(root)
    graph = {name: imports_of(os.path.join(root, path), modules) for name, path in modules.items()}
    for name, targets in sorted(graph.items()):
        source = package_of(modules[name])
        for target in sorted(targets):
            destination = package_of(modules[target])
            if destination != source and destination not in ALLOWED[source]:
                problems.append(f"{modules[name]} imports {target}: {source}/ may import only "
                                f"{', '.join(sorted(ALLOWED[source])) or 'itself'}")
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import circle: " + " -> ".join(cycle))

    targets = {}
    for package in sorted({os.path.dirname(path) for path in modules.values()}):
        targets.update(read_build_targets(root, package))
    # A file's owner is its py_library; a py_binary or py_test may list the same file only when it
    # depends on that library (the usual `x_lib` + `x` pair of a command).
    owner = {}
    for label, (kind, srcs, _) in sorted(targets.items(), key=lambda item: item[1][0] != "py_library"):
        package = label[2:label.index(":")]
        for src in srcs:
            path = os.path.join(package, src)
            if path not in owner:
                owner[path] = label
            elif targets[owner[path]][0] != "py_library" or owner[path] not in targets[label][2]:
                problems.append(f"{path} is in the srcs of both {owner[path]} and {label}")
    build_cycle = find_cycle({label: {dep for dep in deps if dep in targets}
                              for label, (_, _, deps) in targets.items()})
    if build_cycle:
        problems.append("Bazel dependency circle: " + " -> ".join(build_cycle))
    for name, path in sorted(modules.items()):
        if path.endswith("__init__.py"):
            continue
        if path not in owner:
            problems.append(f"{path} is in no Bazel target's srcs: add a py_library, py_binary or "
                            f"py_test for it to {os.path.dirname(path)}/BUILD")
            continue
        label = owner[path]
        kind, _, deps = targets[label]
        base = os.path.basename(path)
        if base_is_test(path) and (
                kind != "py_test" or label.split(":")[1] != base[:-3]):
            problems.append(f"{path} must be the srcs of py_test {base[:-3]} (it is in {kind} {label})")
        for imported in sorted(graph[name]):
            needed = owner.get(modules[imported])
            if needed is not None and needed != label and needed not in deps:
                problems.append(f"{label} ({path}) imports {imported} but does not depend on {needed}")
    return problems


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"layout ok: {len(project_modules(root))} modules, no import circle, no upward import, "
          "every module in its Bazel target")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
