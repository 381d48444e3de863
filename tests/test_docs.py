"""The documentation's commands stay runnable: nothing here runs a job.

1. Every command in a ```bash block of the Markdown files (README.md, the other top-level *.md, docs/*.md)
   that starts one of the project's scripts (`python X.py`, `torchrun ... X.py`, `python -m preprocess.X`, the
   submitit launchers) is parsed in-process by that script's own parser, `get_args_parser().parse_args(argv)`;
   a script without `get_args_parser()` is parsed by the first `parse_args` call of its `main(argv)`, which
   is stopped there. A rejected command fails with the file, the line and argparse's reason (which names the
   flag).
2. A worked example is the ```bash blocks announced by `<!-- example: NAME -->` on the line before the fence,
   read in DOC_ORDER across files. Every file one of its commands reads (READ_FLAGS) must be written by an
   earlier command of the same example (WRITES): the output paths of one step are the input paths of the next.
3. A command of a project script outside a ```bash block would escape 1 and 2, and a placeholder such as
   `<file>` or `[--json FILE]` would parse as something else: both fail too.

Shell handling: backslash continuations are joined, `# comments` dropped, `;`/`&&`/`|` split statements,
`NAME=value` prefixes skipped, variables assigned earlier in the block (`D=demo_output`) substituted, and a
`...` token (an elision in prose) left out. Other `$VARS` stay literal, as paths they parse as strings.
"""
import argparse
import contextlib
import fnmatch
import importlib
import io
import os
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

from conftest import ROOT

DOC_ORDER = ('README.md', 'DATA.md', 'PRETRAIN.md', 'FINETUNE.md')   # reading order of worked examples
EXAMPLE = re.compile(r'^\s*<!--\s*example:\s*([\w.-]+)\s*-->\s*$')
FENCE = re.compile(r'^\s*```\s*([\w+-]*)')
OPERATORS = {';', '&&', '||', '|', '&', '(', ')'}
REDIRECTS = {'>', '>>', '<', '>&', '&>', '2>'}
ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')
VARIABLE = re.compile(r'\$\{(\w+)\}|\$(\w+)')
COMMAND_LINE = re.compile(r'^\s*(?:[A-Z_]+=\S+\s+)*(?:python3?|torchrun)\s')
PLACEHOLDER = re.compile(r'<[A-Za-z][\w .-]*>|\[--?\w[^\]]*\]')   # <file>, [--json FILE]: not a command one can paste

# flags whose value is a file or folder the command reads
READ_FLAGS = ('data_path', 'resume', 'init_from', 'finetune', 'decoder', 'train_manifest', 'val_manifest',
              'test_manifests', 'checkpoint', 'detector', 'manifest')
NOT_READ = {'prepare_faces': ('detector',), 'predict': ('detector',)}   # a detector's name there, not a file


def _prepare_writes(ns):
    """prepare_faces.py writes <output>/<dataset>_<split>.csv (DATA.md, 'What comes out')."""
    if ns.dataset == 'folder':
        src = os.path.normpath(ns.input)
        name = ns.name or os.path.basename(os.path.dirname(src) if os.path.splitext(src)[1] else src)
        return [f'{ns.output}/{name}_{ns.split or "all"}.csv']
    if ns.dataset == 'deepfakebench':                   # datasets named by DeepfakeBench's JSON files
        return [f'{ns.output}/*.csv']
    datasets = [ns.dataset] + (['dfd'] if ns.dataset == 'ffpp' else [])    # FF++ also holds DFD's test set
    return [f'{ns.output}/{d}_*.csv' for d in datasets]


def _pretrain_writes(ns):
    out = ns.output_dir or getattr(ns, 'job_dir', None)
    return [f'{out}/checkpoint-last.pth', f'{out}/checkpoint-*.pth', f'{out}/log.txt']


def _finetune_writes(ns):
    out = ns.output_dir or getattr(ns, 'job_dir', None)
    if not out:
        return []
    reports = [f'{out}/eval.md', f'{out}/eval.json', f'{out}/roc_*.png']
    return reports if ns.eval else reports + [f'{out}/checkpoint-best.pth', f'{out}/checkpoint-last.pth',
                                              f'{out}/log.txt']


# what each script writes, by module name (documented in the file that describes the script)
WRITES = {
    'prepare_faces': _prepare_writes,
    'main_pretrain': _pretrain_writes,
    'submitit_pretrain': _pretrain_writes,
    'main_finetune': _finetune_writes,
    'submitit_finetune': _finetune_writes,
    'demo': lambda ns: [f'{ns.out}/data/*.csv', f'{ns.out}/pretrain/checkpoint-last.pth',
                        f'{ns.out}/finetune/checkpoint-best.pth', f'{ns.out}/finetune/checkpoint-last.pth'],
    'predict': lambda ns: [p for p in (ns.json, ns.heatmap) if p],
    'Visualization.visualize': lambda ns: [f'{ns.out}/*.png'],
}


# ---------------------------------------------------------------------------------------------- Markdown
def doc_files(root=ROOT):
    top = sorted(p.name for p in Path(root).glob('*.md'))
    ordered = [n for n in DOC_ORDER if n in top] + [n for n in top if n not in DOC_ORDER]
    return [Path(root) / n for n in ordered] + sorted((Path(root) / 'docs').glob('*.md'))


def blocks(path):
    """(language, example name or None, [(line number, text)]) for each fenced block of a Markdown file."""
    out, lang, example, body, previous = [], None, None, [], ''
    for number, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines(), 1):
        if lang is None:
            m = FENCE.match(line)
            if m:
                lang, body = m.group(1).lower(), []
                e = EXAMPLE.match(previous)
                example = e.group(1) if e else None
            elif line.strip():
                previous = line
        elif line.strip().startswith('```'):
            out.append((lang, example, body))
            lang, previous = None, ''
        else:
            body.append((number, line))
    return out


def command_lines(body):
    """Join backslash continuations: [(first line number, one logical line)]."""
    out, pending, start = [], '', None
    for number, line in body:
        start = number if start is None else start
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        out.append((start, pending + line))
        pending, start = '', None
    if pending:
        out.append((start, pending))
    return out


def statements(line, env):
    """Token lists of the simple commands of one logical line; `NAME=value` statements update env."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, '#'
    tokens, out, current = list(lex), [], []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in OPERATORS:
            out.append(current)
            current = []
        elif t in REDIRECTS:
            i += 1                                     # the redirection's target is no argument
        else:
            current.append(t)
        i += 1
    out.append(current)
    result = []
    for tokens in filter(None, out):
        tokens = [VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), t) for t in tokens]
        k = 0
        while k < len(tokens) and ASSIGNMENT.match(tokens[k]):
            k += 1
        if k == len(tokens):                           # D=demo_output: a variable for the next commands
            env.update(t.split('=', 1) for t in tokens)
        else:
            result.append(tokens[k:])
    return result


# ----------------------------------------------------------------------------------------------- scripts
def project_script(tokens, root=ROOT):
    """(module name, argv) when the command starts one of the project's scripts, else None.
    A script or module of the project's packages that does not exist is returned too, to fail."""
    if tokens[0] in ('python', 'python3') and len(tokens) > 1:
        if tokens[1] == '-m' and len(tokens) > 2:
            module = tokens[2]
            if not (Path(root) / module.split('.')[0]).exists() and \
                    not (Path(root) / f'{module.split(".")[0]}.py').exists():
                return None                            # python -m pytest and other installed tools
            return module, tokens[3:]
        script, argv = tokens[1], tokens[2:]
    elif tokens[0] == 'torchrun':
        idx = next((i for i, t in enumerate(tokens) if t.endswith('.py')), None)
        if idx is None:
            return None
        script, argv = tokens[idx], tokens[idx + 1:]
    else:
        return None
    if not script.endswith('.py'):
        return None
    return os.path.normpath(script)[:-3].replace(os.sep, '.'), argv


_modules = {}


def load(module):
    if module not in _modules:
        _modules[module] = importlib.import_module(module)
    return _modules[module]


class _Parsed(Exception):
    pass


def parse(module, argv):
    """The script's own parse of argv: (Namespace, None) or (None, argparse's reason)."""
    try:
        mod = load(module)
    except ImportError as e:
        return None, f'cannot import {module}: {e}'
    argv = [a for a in argv if a != '...']
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if hasattr(mod, 'get_args_parser'):
                return mod.get_args_parser().parse_args(argv), None
            if not hasattr(mod, 'main'):
                return None, f'{module} has neither get_args_parser() nor main(argv) to parse with'
            original = argparse.ArgumentParser.parse_args

            def first_parse(self, args=None, namespace=None):
                raise _Parsed(original(self, args, namespace))
            with mock.patch.object(argparse.ArgumentParser, 'parse_args', first_parse):
                try:
                    mod.main(argv)
                except _Parsed as parsed:
                    return parsed.args[0], None
            return None, f'{module}.main(argv) returned without parsing its arguments'
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        return None, lines[-1] if lines else 'rejected (SystemExit)'


def doc_commands(files):
    """(file, line, module, argv, example) of every project command in ```bash blocks, and the problems of
    commands left outside such blocks."""
    found, stray = [], []
    for path in files:
        rel = os.path.relpath(path, ROOT) if Path(path).is_relative_to(ROOT) else str(path)
        for lang, example, body in blocks(path):
            if lang not in ('bash', 'sh', 'shell'):
                stray += [f'{rel}:{n}: a command in a ```{lang or "(untagged)"} block: tag the block ```bash so '
                          f'that tests/test_docs.py checks it' for n, text in body if COMMAND_LINE.match(text)]
                continue
            env = {}
            for number, line in command_lines(body):
                for tokens in statements(line, env):
                    hit = project_script(tokens)
                    if hit:
                        found.append((rel, number, hit[0], hit[1], example))
                        m = PLACEHOLDER.search(line.split(' #')[0])
                        if m:
                            stray.append(f'{rel}:{number}: placeholder {m.group(0)!r} in a command: write a value '
                                         f'that runs (a path, a number) so that the command can be pasted')
    return found, stray


def check_parse(commands):
    problems, parsed = [], []
    for rel, number, module, argv, example in commands:
        ns, reason = parse(module, argv)
        if ns is None:
            problems.append(f'{rel}:{number}: {module.replace(".", "/")}.py rejects the command: {reason}')
        parsed.append((rel, number, module, ns, example))
    return problems, parsed


def _norm(path):
    """One spelling per path: normalised, relative to the repository when it lies inside it (demo.py's default
    --out is absolute)."""
    path = os.path.normpath(path)
    if os.path.isabs(path) and Path(path).is_relative_to(ROOT):
        path = os.path.relpath(path, ROOT)
    return path


def check_chains(parsed):
    """Every file a worked example's command reads is written by an earlier command of that example."""
    problems, by_example = [], {}
    for item in parsed:
        if item[4] is not None:
            by_example.setdefault(item[4], []).append(item)
    for name, items in by_example.items():
        written, reads_any = [], False
        for rel, number, module, ns, _ in items:
            if ns is None:
                continue                               # reported by check_parse
            for flag in READ_FLAGS:
                if flag in NOT_READ.get(module, ()):
                    continue
                values = getattr(ns, flag, None)
                for value in ([values] if isinstance(values, str) else values or []):
                    if not value:
                        continue
                    reads_any = True
                    path = _norm(value)
                    if not any(fnmatch.fnmatchcase(path, w) for w in written):
                        problems.append(f'{rel}:{number}: --{flag} {value} of worked example "{name}" is not '
                                        f'written by an earlier command of the example (written so far: '
                                        f'{", ".join(written) or "nothing"})')
            written += [_norm(w) for w in WRITES.get(module, lambda ns: [])(ns)]
        if not reads_any:
            problems.append(f'worked example "{name}" ({items[0][0]}:{items[0][1]}): no command reads what '
                            f'another wrote')
    return problems


# ------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope='module')
def docs():
    commands, stray = doc_commands(doc_files())
    problems, parsed = check_parse(commands)
    return commands, stray, problems, parsed


def test_every_documented_command_parses(docs):
    commands, stray, problems, _ = docs
    scripts = {c[2] for c in commands}
    assert {'prepare_faces', 'main_pretrain', 'main_finetune', 'predict'} <= scripts, scripts
    assert not problems, '\n' + '\n'.join(problems)


def test_commands_are_in_bash_blocks(docs):
    assert not docs[1], '\n' + '\n'.join(docs[1])


def test_worked_examples_chain(docs):
    parsed = docs[3]
    examples = {p[4] for p in parsed if p[4]}
    assert {'own-faces', 'cross-dataset'} <= examples, examples
    problems = check_chains(parsed)
    assert not problems, '\n' + '\n'.join(problems)


def _guide(tmp_path, epochs='ten', extra='--no_such_flag 1', resume='runs/c/checkpoint-best.pth'):
    md = tmp_path / 'GUIDE.md'
    md.write_text('\n'.join([
        '<!-- example: broken -->',
        '```bash',
        'python prepare_faces.py --input vids/ --output data/faces --label 0 --split train --name mine',
        'python main_pretrain.py --data_path data/faces/mine_train.csv --output_dir runs/a \\',
        f'    --epochs {epochs}',
        'OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 main_pretrain.py --data_path data/faces/other.csv \\',
        f'    --output_dir runs/b {extra}   # a comment',
        'D=runs/a; python main_finetune.py --finetune $D/checkpoint-last.pth --output_dir runs/ft \\',
        '    --train_manifest data/faces/mine_train.csv ...',
        f'python main_finetune.py --eval --resume {resume} --test_manifests data/faces/mine_train.csv',
        '```',
        '',
        '```',
        'python demo.py --quick',
        '```',
        '```bash',
        'python predict.py --checkpoint <ckpt> photo.jpg [--json out.json]',
        '```',
    ]) + '\n')
    return md


def test_the_checks_catch_rot(tmp_path):
    """A wrong flag, a bad value, a broken chain and an untagged command are each reported with file and line."""
    md = _guide(tmp_path)
    rel = str(md)
    commands, stray = doc_commands([md])
    assert [(c[1], c[2]) for c in commands] == [(3, 'prepare_faces'), (4, 'main_pretrain'), (6, 'main_pretrain'),
                                                (8, 'main_finetune'), (10, 'main_finetune'), (17, 'predict')]
    assert commands[3][3][1] == 'runs/a/checkpoint-last.pth'           # $D substituted
    assert len(stray) == 2 and stray[0].startswith(f'{rel}:14: a command in a ```(untagged) block')
    assert stray[1].startswith(f"{rel}:17: placeholder '<ckpt>' in a command")
    problems, parsed = check_parse(commands)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f'{rel}:4: main_pretrain.py rejects') and '--epochs' in problems[0]
    assert problems[1].startswith(f'{rel}:6: main_pretrain.py rejects') and '--no_such_flag' in problems[1]
    chain = check_chains(parsed)          # line 4 was rejected, so nothing wrote the checkpoint line 8 reads
    assert [c.split(' of worked')[0] for c in chain] == [f'{rel}:8: --finetune runs/a/checkpoint-last.pth',
                                                        f'{rel}:10: --resume runs/c/checkpoint-best.pth'], chain

    # flags fixed and the fine-tuning's own checkpoint evaluated: only the unwritten manifest is left
    problems, parsed = check_parse(doc_commands([_guide(tmp_path, '10', '', 'runs/ft/checkpoint-best.pth')])[0])
    assert problems == []
    chain = check_chains(parsed)
    assert len(chain) == 1 and chain[0].startswith(f'{rel}:6: --data_path data/faces/other.csv of worked '
                                                   f'example "broken" is not written'), chain


def test_scripts_without_get_args_parser_are_parsed_by_their_main():
    ns, reason = parse('synthetic.faces', ['--out', 'x', '--num', '8'])
    assert reason is None and ns.out == 'x' and ns.num == 8
    ns, reason = parse('synthetic.faces', ['--out', 'x'])
    assert ns is None and '--num' in reason
    ns, reason = parse('submitit_pretrain', ['--job_dir', '/shared/j', '--nodes', '2', '--epochs', '3'])
    assert reason is None and ns.nodes == 2 and ns.epochs == 3


# ----------------------------------------------------------------------------------------- flags tables
FLAG = re.compile(r'--[A-Za-z][\w-]*')
FLAG_TABLES = {'main_pretrain': 'PRETRAIN.md', 'main_finetune': 'FINETUNE.md'}


def flags_table(path):
    """{flag: group} from the '## Flags' section of a Markdown file: a row whose first cell is **bold** names a
    group, the flags of the first cell of each row below it belong to it."""
    rows, group, inside = {}, None, False
    for line in Path(path).read_text(encoding='utf-8').splitlines():
        if line.startswith('## '):
            inside = line.strip() == '## Flags'
            continue
        if not inside or not line.startswith('|'):
            continue
        first = line.split('|')[1].strip()
        if first.startswith('**'):
            group = first.strip('*')
        else:
            rows.update((f, group) for f in FLAG.findall(first))
    return rows


def parser_flags(parser):
    """{flag: the title of its argument group, up to any parenthesis}, --help left out (argparse keeps the groups
    in private attributes; this reads them and changes nothing)."""
    return {f: g.title.split(' (')[0] for g in parser._action_groups for a in g._group_actions
            for f in a.option_strings if f not in ('-h', '--help')}


@pytest.mark.parametrize('module', sorted(FLAG_TABLES))
def test_flags_tables_match_the_parsers(module):
    table = flags_table(Path(ROOT) / FLAG_TABLES[module])
    flags = parser_flags(load(module).get_args_parser())
    missing = sorted(set(flags) - set(table))
    unknown = sorted(set(table) - set(flags))
    assert not missing and not unknown, (f'{FLAG_TABLES[module]} ## Flags lacks {missing} of {module}.py; names '
                                         f'{unknown}, which {module}.py does not have')
    moved = [f'{f} under {table[f]!r}, parser group {g!r}' for f, g in flags.items() if table[f] != g]
    assert not moved, f'{FLAG_TABLES[module]}: ' + '; '.join(moved)


def test_flags_table_check_catches_a_missing_and_an_unknown_flag(tmp_path):
    md = tmp_path / 'X.md'
    md.write_text('## Flags\n\n| flag | default |\n|---|---|\n| **options** | |\n| `--batch_size` | 64 |\n'
                  '| **model** | |\n| `--modle` | x |\n\n## Next\n\n| `--not_a_flag` | |\n')
    assert flags_table(md) == {'--batch_size': 'options', '--modle': 'model'}
    flags = parser_flags(load('main_pretrain').get_args_parser())
    assert '--model' in set(flags) - set(flags_table(md)) and '--modle' not in flags
