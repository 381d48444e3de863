"""util.metrics against values worked out by hand (ROC points listed in each test)."""
import math

import pytest

from util.metrics import compute_metrics, eer_from_roc, main, video_scores


def test_classic_four_points():
    # scores sorted: 0.8(F) 0.4(R) 0.35(F) 0.1(R)
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); AUC = 3 of 4 pairs ordered = 0.75
    # FNR - FPR: 1, .5, 0 -> EER exactly .5 at the third point
    # AP = .5 * 1 + .5 * 2/3; ACC (fake when > .5): only 0.35 is wrong -> 3/4
    m = compute_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m['auc'] == pytest.approx(0.75)
    assert m['eer'] == pytest.approx(0.5)
    assert m['ap'] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m['acc'] == pytest.approx(0.75)
    assert (m['n'], m['n_real'], m['n_fake']) == (4, 2, 2)
    assert 'video_auc' not in m


def test_ties_and_interpolated_eer():
    # scores: 0.8(F), 0.5(R) tied with 0.5(F), 0.2(R)
    # AUC: fake .8 beats both reals (2), fake .5 ties real .5 (.5) and beats .2 (1) -> 3.5 / 4
    # ROC: (0,0) (0,.5) (.5,1) (1,1); on the segment (0, FNR .5) -> (.5, FNR 0) FPR = FNR at .25
    # AP: threshold .8 -> P 1, R .5; threshold .5 -> P 2/3, R 1 -> .5 + .5 * 2/3
    # ACC: 0.5 is not above 0.5, so both tied faces are called real: 3 of 4 right
    m = compute_metrics([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.8])
    assert m['auc'] == pytest.approx(0.875)
    assert m['eer'] == pytest.approx(0.25)
    assert m['ap'] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m['acc'] == pytest.approx(0.75)


def test_eer_on_vertical_segment():
    # scores: .9(F) .6(R) .4(F) .2(R) .1(R); ROC (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    # FNR - FPR crosses zero on the vertical segment at FPR 1/3; AUC = 5 / 6
    m = compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.4, 0.9])
    assert m['eer'] == pytest.approx(1 / 3)
    assert m['auc'] == pytest.approx(5 / 6)


def test_eer_from_given_roc():
    # a known ROC: straight segment from (0, TPR .6) to (.4, TPR 1): FPR = 1 - TPR where .4 t = .4 (1 - t) -> t = .5
    assert eer_from_roc([0, 0, 0.4, 1], [0, 0.6, 1, 1]) == pytest.approx(0.2)
    assert eer_from_roc([0, 0, 1], [0, 1, 1]) == pytest.approx(0.0)      # perfect separation
    assert eer_from_roc([0, 1, 1], [0, 0, 1]) == pytest.approx(1.0)      # perfectly wrong


def test_video_grouping():
    # video means: a .2 (real), b .4 (fake), c .4 (real) -> video AUC: b beats a, ties c -> .75
    videos = ['a', 'a', 'b', 'b', 'c', 'c']
    m = compute_metrics([0, 0, 1, 1, 0, 0], [0.1, 0.3, 0.6, 0.2, 0.5, 0.3], videos)
    assert m['video_auc'] == pytest.approx(0.75)
    assert (m['n_videos'], m['n_real_videos'], m['n_fake_videos']) == (3, 2, 1)
    assert m['video_acc'] == pytest.approx(2 / 3)                      # all three videos <= .5: called real
    ids, lab, score = video_scores([0, 0, 1, 1, 0, 0], [0.1, 0.3, 0.6, 0.2, 0.5, 0.3], videos)
    assert list(ids) == ['a', 'b', 'c'] and list(lab) == [0, 1, 0]
    assert list(score) == pytest.approx([0.2, 0.4, 0.4])


def test_video_with_both_labels_is_an_error():
    with pytest.raises(ValueError, match="video 'x' has both real and fake"):
        compute_metrics([0, 1, 0], [0.2, 0.8, 0.1], ['x', 'x', 'y'])


def test_one_class_reports_what_it_can():
    m = compute_metrics([0, 0, 0], [0.2, 0.7, 0.1], ['a', 'a', 'b'])
    assert m['auc'] is None and m['eer'] is None and m['ap'] is None and m['video_auc'] is None
    assert m['acc'] == pytest.approx(2 / 3)
    assert 'undefined' in m['note'] and 'only real' in m['note']
    m = compute_metrics([1, 1], [0.9, 0.4])
    assert m['auc'] is None and m['ap'] == pytest.approx(1.0) and m['acc'] == pytest.approx(0.5)
    assert 'only fake' in m['note']


def test_bad_input():
    with pytest.raises(ValueError, match='labels but'):
        compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match='not finite'):
        compute_metrics([0, 1], [0.5, math.nan])
    with pytest.raises(ValueError, match='0 \\(real\\) or 1'):
        compute_metrics([0, 2], [0.5, 0.1])


def test_command_line_errors_name_the_file_once(tmp_path, capsys):
    no_path = tmp_path / 'scores_a.csv'
    no_path.write_text('label,score,video,method\n0,0.2,v,\n')
    bad_label = tmp_path / 'scores_b.csv'
    bad_label.write_text('path,label,score,video,method\nx.png,2,0.2,v,\n')
    for path, words in ((no_path, 'score file lacks column(s) path'),
                        (bad_label, 'labels must be 0 (real) or 1 (fake)'),
                        (tmp_path / 'absent.csv', 'no such file')):
        with pytest.raises(SystemExit) as e:
            main([str(path)])
        [line] = capsys.readouterr().err.splitlines()
        assert e.value.code == 2 and line.startswith(f'python -m util.metrics: error: {path}: {words}')
        assert line.count(str(path)) == 1
