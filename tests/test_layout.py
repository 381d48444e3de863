"""The code base's shape: the fine-tuning entry point stays small, no module imports another that imports it
back (even inside a function), no module reaches into another's private names or argparse's internals."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {'tests', 'MIFAE-Forensics'}


def project_modules():
    """{dotted name: parsed file} of every shipped module: the top-level scripts and the packages beside them
    (tests and the reference code excluded; a virtual environment in the checkout is not a package)."""
    packages = [d for d in ROOT.iterdir() if (d / '__init__.py').is_file() and d.name not in SKIP]
    files = sorted(ROOT.glob('*.py')) + [p for d in packages for p in sorted(d.rglob('*.py'))]
    return {'.'.join(p.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__'): ast.parse(p.read_text())
            for p in files}


def imported_names(tree):
    """(module, name) for every import anywhere in the file; name is None for `import module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield from ((node.module, a.name) for a in node.names)


def import_graph(modules):
    graph = {}
    for name, tree in modules.items():
        deps = set()
        for mod, attr in imported_names(tree):
            deps |= {m for m in (mod, f'{mod}.{attr}') if m in modules}
        graph[name] = deps - {name}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope='module')
def modules():
    return project_modules()


def test_main_finetune_stays_small():
    assert len((ROOT / 'main_finetune.py').read_text().splitlines()) <= 500


def test_no_import_circle(modules):
    assert {'main_finetune', 'models_vit', 'util.hub', 'util.metrics'} <= set(modules)
    assert cycles(import_graph(modules)) == []


def test_the_circle_check_finds_a_lazy_circle():
    a = ast.parse('import b\n')
    b = ast.parse('def f():\n    from a import g\n')
    c = ast.parse('import a\n')
    assert cycles(import_graph(dict(a=a, b=b, c=c))) == [['a', 'b']]


def module_aliases(tree, own):
    """{local name: project module} for `import util.hub as hub` and `from util import hub`."""
    aliases = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in n.names if a.name in own})
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            aliases.update({a.asname or a.name: f'{n.module}.{a.name}' for a in n.names
                            if f'{n.module}.{a.name}' in own})
    return aliases


def test_no_private_names_across_modules(modules):
    own = set(modules)
    bad = [f'{name}: {mod}.{attr}' for name, tree in modules.items() for mod, attr in imported_names(tree)
           if mod in own and attr and attr.startswith('_')]
    for name, tree in modules.items():
        aliases = module_aliases(tree, own)
        bad += [f'{name}: {aliases[n.value.id]}.{n.attr}' for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
                and n.attr.startswith('_') and not n.attr.startswith('__')]
    assert bad == []


def test_no_argparse_internals(modules):
    internals = {'_actions', '_defaults', '_option_string_actions', '_action_groups', '_group_actions'}
    bad = [f'{name}: {n.attr}' for name, tree in modules.items() for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and n.attr in internals]
    assert bad == []
