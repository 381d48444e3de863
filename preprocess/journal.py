"""The journal of prepare_faces.py (resumability), its manifests and failures.csv (atomic writes).

A manifest row is MANIFEST_COLUMNS: path,landmarks,label,video,dataset,method,split,compression,frame,source
(paths relative to the CSV's folder); journal_rows makes the rows of one face, one per (dataset, split) of its item.
"""
import csv
import json
import os
import sys

from preprocess.layouts import safe_name
from util import formats
from util.fileio import atomic_write

MANIFEST_COLUMNS = [*formats.MANIFEST_COLUMNS,        # the columns every stage reads, then this tool's
                    'method', 'split', 'compression', 'frame', 'source']
JOURNAL_DIR = '.prepare'


def journal_rows(item, img_rel, npy_rel, frame, source, video=None):
    return [[img_rel, npy_rel, item['label'], video or item['video'], dataset, item['method'],
             split, item['compression'], '' if frame is None else str(frame), source]
            for dataset, split in item['memberships']]


# ---------------------------------------------------------------------------------
# 3. Journal (resumability), manifests and failures.csv (atomic writes)
# ---------------------------------------------------------------------------------

def write_atomic(path, write_fn):
    """util.fileio.atomic_write for text, creating the folder: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write_fn)


def write_csv(path, header, rows):
    def fill(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    write_atomic(path, fill)


class Journal:
    """Append-only JSON-lines record of finished items, one file per input tag.

    Lines: {"settings": ...} first, then {"listing_failures": [...]} and one
    {"key", "rows", "failures", "stats", "retry"} per finished item (the last one
    of a key counts). A line cut short by a crash is ignored, and dropped before the
    next append, so at most the item in flight is lost. Only the run of this tag
    appends; other runs read it (write_failures) and leave it as it is."""

    def __init__(self, output, tag):
        self.path = os.path.join(output, JOURNAL_DIR, f'{tag}.jsonl')
        self.settings, self.items, self.listing_failures = None, {}, []
        self._whole = None     # length of the whole lines, when the last one was cut short
        data = b''
        if os.path.isfile(self.path):
            with open(self.path, 'rb') as f:
                data = f.read()
        end = data.rfind(b'\n') + 1
        if end < len(data):
            self._whole = end
        for line in data[:end].decode('utf-8', 'replace').splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if 'settings' in rec:
                self.settings = rec['settings']
            elif 'listing_failures' in rec:
                self.listing_failures = rec['listing_failures']
            elif 'key' in rec:
                self.items[rec['key']] = rec

    def done(self, key):
        rec = self.items.get(key)
        return rec is not None and not rec.get('retry')

    def reset(self):
        if os.path.exists(self.path):
            os.remove(self.path)
        self.settings, self.items, self.listing_failures, self._whole = None, {}, [], None

    def append(self, rec):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if self._whole is not None:     # drop the cut line, or the next record would continue it
            os.truncate(self.path, self._whole)
            self._whole = None
        with open(self.path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
            f.flush()
            os.fsync(f.fileno())
        if 'settings' in rec:
            self.settings = rec['settings']
        elif 'listing_failures' in rec:
            self.listing_failures = rec['listing_failures']
        else:
            self.items[rec['key']] = rec


def _manifest_path(output, dataset, split, suffix=''):
    return os.path.join(output, f'{safe_name(dataset)}_{safe_name(split)}{suffix}.csv')


def _groups(journal):
    return {(row[4], row[6]) for rec in journal.items.values() for row in rec['rows']}


def relabel(output, journal, items, suffix=''):
    """Give the finished items' rows the label, dataset, split, method and compression of
    the current listing (journaled), so that a re-run with a corrected --label, --split or
    --splits rewrites the manifests without detecting anything again; remove the
    manifests that none of this journal's rows goes to any more. Rows of items not in
    the listing (other files of a single-file input's folder) stay as they were."""
    current = {it['key']: it for it in items}
    before = _groups(journal)
    for key, rec in list(journal.items.items()):
        item = current.get(key)
        if item is None:
            continue
        faces = {row[0]: row for row in rec['rows']}     # one per face (a row per membership)
        rows = [r for f in faces.values() for r in journal_rows(item, f[0], f[1], f[8], f[9], f[3])]
        if rows != rec['rows']:
            journal.append(dict(rec, rows=rows))
    for dataset, split in sorted(before - _groups(journal)):
        path = _manifest_path(output, dataset, split, suffix)
        if os.path.exists(path):
            os.remove(path)
            print(f'{path}: removed, its rows now go to other manifests', file=sys.stderr)


def write_manifests(output, journal, suffix=''):
    """<output>/<dataset>_<split>.csv from the journal (rows de-duplicated by path)."""
    groups = {}
    for rec in journal.items.values():
        for row in rec['rows']:
            groups.setdefault((row[4], row[6]), {})[row[0]] = row
    written = {}
    for (dataset, split), rows in sorted(groups.items()):
        path = _manifest_path(output, dataset, split, suffix)
        write_csv(path, MANIFEST_COLUMNS, [rows[k] for k in sorted(rows)])
        written[os.path.basename(path)] = len(rows)
    return written


def write_failures(output):
    """<output>/failures.csv from every journal in <output>/.prepare."""
    rows = []
    folder = os.path.join(output, JOURNAL_DIR)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith('.jsonl'):
            j = Journal(output, name[:-len('.jsonl')])
            rows += [list(r) for r in j.listing_failures]
            for rec in j.items.values():
                rows += [list(r) for r in rec['failures']]
    write_csv(os.path.join(output, 'failures.csv'), ['path', 'reason'], rows)
    return rows
