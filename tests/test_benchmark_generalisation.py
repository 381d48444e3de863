"""benchmarks/generalisation.py: a tiny grid runs end to end and its table, JSON and figure agree with its runs;
the forgery families come from the synthetic-face generator's table when it has one."""
import importlib.util
import json

import numpy as np
import pytest

from benchmarks import generalisation as bg


@pytest.mark.slow
def test_tiny_grid_writes_consistent_table_json_and_figure(tmp_path):
    args = bg.get_args_parser().parse_args(['--quick', '--seeds', '2', '--stage1', 'none', 'mifae',
                                            '--stage2', 'swap', 'sbi', '--threads', '1', '--out', str(tmp_path)])
    result = bg.main(args)
    families = list(bg.forgery_families())
    assert bg.SBI_FAMILY in families and len(families) >= 3
    assert len(result['runs']) == 2 * 2 * 2
    photo = importlib.util.find_spec('dlib') is not None             # dlib installed: the real-photo set too
    for r in result['runs']:
        assert set(r['auc']) == set(families) | ({bg.PHOTO} if photo else set())
        assert all(0 <= v <= 1 for v in r['auc'].values())
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['summary'] == result['summary'] and len(saved['summary']) == 4
    for cell in result['summary']:
        runs = [r for r in result['runs'] if (r['stage1'], r['stage2']) == (cell['stage1'], cell['stage2'])]
        trained = cell['train_family']
        assert trained == (bg.SBI_FAMILY if cell['stage2'] == 'sbi' else families[0])
        assert trained not in cell['unseen_families'] and len(cell['unseen_families']) == len(families) - 1
        assert np.isclose(cell['train_auc']['mean'], np.mean([r['auc'][trained] for r in runs]))
        unseen = [np.mean([r['auc'][f] for f in cell['unseen_families']]) for r in runs]
        assert np.isclose(cell['unseen_auc']['mean'], np.mean(unseen))
        assert np.isclose(cell['unseen_auc']['sd'], np.std(unseen, ddof=1))
        if photo:
            assert np.isclose(cell['photo_auc']['mean'], np.mean([r['auc'][bg.PHOTO] for r in runs]))
    md = (tmp_path / 'results.md').read_text()
    assert md.count('\n| ') == 4 and 'full MIFAE' in md and 'no pre-training' in md
    assert ('AUC real photo (sbi)' in md) == photo
    assert (tmp_path / 'generalisation.png').stat().st_size > 5000
    with pytest.raises(SystemExit, match='holds an earlier grid'):      # refused before any work, nothing lost
        bg.main(args)
    assert json.loads((tmp_path / 'results.json').read_text())['summary'] == result['summary']


def test_photo_crops_frame_the_real_face():
    """The real-photo test set: crops of the astronaut's face at several framings, each self-blendable."""
    pytest.importorskip('dlib')                                      # a requirement; absent on GPU-only machines
    photo = bg.photo_face()
    assert photo is not None, "dlib found no face in skimage's astronaut"
    crops = bg.photo_crops(photo, 4, 64, np.random.default_rng(0))
    assert len({c.tobytes() for c, _ in crops}) == 4
    for crop, lm in crops:
        assert crop.shape == (64, 64, 3) and crop.std() > 20
        assert (lm >= 0).all() and (lm < 64).all() and np.ptp(lm, axis=0).min() > 25
        fake, mask = bg.self_blend(crop, lm, np.random.default_rng(1))
        assert np.array_equal(fake[mask == 0], crop[mask == 0]) and (mask > 0).mean() > 0.2


def test_families_follow_the_generator_table(monkeypatch):
    def flat(target, source, rng, size):
        return np.full((size, size, 3), 128, np.uint8), None
    assert list(bg.forgery_families()) == [*bg.sf.FORGERY_FAMILIES, bg.SBI_FAMILY]
    monkeypatch.setattr(bg.sf, 'FORGERY_FAMILIES', None)            # a generator without a table: its swaps
    assert list(bg.forgery_families())[:2] == ['swap_strong', 'swap_subtle']
    monkeypatch.setattr(bg.sf, 'FORGERY_FAMILIES', {'flat': flat}, raising=False)
    fams = bg.forgery_families()
    assert list(fams) == ['flat', bg.SBI_FAMILY]
    assert bg.make_forgery(fams['flat'], None, None, np.random.default_rng(0), 16).shape == (16, 16, 3)
