"""Tests of synthetic/faces.py (procedural faces with exact iBUG-68 landmarks + face-swap fakes)."""
import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from synthetic import faces as sf

REPO = Path(__file__).resolve().parents[1]


def _faces(n, size=128, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ident = sf.sample_identity(rng)
        img, lm = sf.render_face(ident, rng, size)
        out.append((ident, img, lm))
    return out


def _poly_mask(pts, size):
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("size", [128, 256])
def test_render_shapes_and_landmarks_inside(size):
    for _, img, lm in _faces(12, size, seed=size):
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        assert np.isfinite(lm).all()
        assert lm.min() >= 0 and lm.max() <= size - 1
        # the face fills most of the image, like a 1.3-margin face crop
        extent = (lm.max(0) - lm.min(0)).max() / size
        assert 0.6 < extent < 0.85


def test_landmarks_anatomical_order():
    for _, _, lm in _faces(40, 128, seed=1):
        y = lm[:, 1]
        brows, eyes = y[17:27].mean(), y[36:48].mean()
        mouth = y[48:68].mean()
        assert brows < eyes < y[30] < mouth < y[8], (brows, eyes, y[30], mouth, y[8])
        # subject's right (image left) before left, for every paired group
        assert lm[17:22, 0].mean() < lm[22:27, 0].mean()
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
        assert lm[0, 0] < lm[8, 0] < lm[16, 0]
        assert lm[48, 0] < lm[54, 0] and lm[31, 0] < lm[33, 0] < lm[35, 0]
        # nose tip inside the jaw span, mouth below the nostrils
        assert lm[0, 0] < lm[30, 0] < lm[16, 0]
        assert y[31:36].mean() < y[48:60].min() + 1


def test_landmarks_lie_on_drawn_features():
    """Eye polygons contain eye colours (sclera/iris), not skin; lips and brows differ from skin too."""
    size = 256
    for ident, img, lm in _faces(10, size, seed=2):
        f = img.astype(np.float32)
        cheek_pt = np.round((lm[3] + lm[31]) / 2).astype(int)           # right cheek
        cheek = f[cheek_pt[1] - 2:cheek_pt[1] + 3, cheek_pt[0] - 2:cheek_pt[0] + 3].reshape(-1, 3).mean(0)
        for idx in (sf.RIGHT_EYE, sf.LEFT_EYE):
            m = _poly_mask(lm[idx], size)
            if m.sum() < 15:      # blink
                continue
            eye = f[m]
            # iris/pupil are dark, sclera is bright: strong spread and far from the cheek colour
            dist = np.linalg.norm(eye - cheek, axis=1)
            assert np.median(dist) > 25 or dist.mean() > 30, (dist.mean(), ident["skin"])
        # the brow centre line is brow-coloured: farther from the skin than the cheek is
        brow_px = f[np.round(lm[17:27, 1]).astype(int), np.round(lm[17:27, 0]).astype(int)]
        assert np.linalg.norm(brow_px.mean(0) - cheek) > 15 or \
            np.linalg.norm(np.asarray(ident["brow_colour"]) - np.asarray(ident["skin"])) < 40
        # lips region is lip-coloured, not skin
        lips = f[_poly_mask(lm[48:60], size)].mean(0)
        assert np.linalg.norm(lips - cheek) > 10
        # jaw points sit on the face/background boundary: just outside (away from the nose) is not skin
        centre = lm[30]
        outs = []
        for p in lm[2:15]:
            d = (p - centre) / np.linalg.norm(p - centre)
            inside = np.round(p - 4 * d).astype(int)
            outside = np.round(p + 4 * d).astype(int)
            if (outside < 0).any() or (outside >= size).any():
                continue
            outs.append(np.linalg.norm(f[outside[1], outside[0]] - f[inside[1], inside[0]]))
        assert np.median(outs) > 12


def test_determinism_and_identity_variety():
    a = _faces(3, 128, seed=5)
    b = _faces(3, 128, seed=5)
    for (ia, xa, la), (ib, xb, lb) in zip(a, b):
        assert ia == ib
        assert np.array_equal(xa, xb) and np.array_equal(la, lb)
    c = _faces(3, 128, seed=6)
    assert a[0][0] != c[0][0]
    assert np.abs(a[0][1].astype(int) - c[0][1].astype(int)).mean() > 10
    # different identities differ; different renders of one identity differ a little
    assert np.abs(a[0][1].astype(int) - a[1][1].astype(int)).mean() > 10
    rng = np.random.default_rng(0)
    x1, l1 = sf.render_face(a[0][0], rng, 128)
    x2, l2 = sf.render_face(a[0][0], rng, 128)
    assert not np.array_equal(x1, x2) and np.abs(l1 - l2).max() > 0.1


def test_make_fake_changes_inner_face_only():
    size = 128
    rng = np.random.default_rng(11)
    ratios = []
    for k in range(6):
        t, s = sf.sample_identity(rng), sf.sample_identity(rng)
        real, lm_r = sf.render_face(t, np.random.default_rng(k), size)
        fake, lm_f = sf.make_fake(t, s, np.random.default_rng(k), size)
        assert fake.shape == real.shape and fake.dtype == np.uint8
        assert lm_f.shape == (68, 2) and lm_f.dtype == np.float32
        np.testing.assert_array_equal(lm_f, lm_r)          # geometry of the result = target's
        hull = cv2.convexHull(lm_r[17:68])[:, 0]
        inside = _poly_mask(hull, size)
        diff = np.abs(fake.astype(np.float32) - real.astype(np.float32)).mean(2)
        d_in, d_out = diff[inside].mean(), diff[~inside].mean()
        assert d_in > 3
        ratios.append(d_in / max(d_out, 1e-3))
    assert min(ratios) > 5, ratios


def test_strong_artefacts_are_more_visible():
    """A face swapped onto itself differs from the real render only by the swap's artefacts (tone left over,
    resampling, seam): "strong" leaves clearly more of them inside the inner face than "subtle"."""
    size, rng = 64, np.random.default_rng(5)
    gaps = {"subtle": [], "strong": []}
    for k in range(8):
        t = sf.sample_identity(rng)
        real, lm = sf.render_face(t, np.random.default_rng(k), size)
        inside = _poly_mask(cv2.convexHull(lm[17:68])[:, 0], size)
        for name in gaps:
            swap = sf.sample_swap(np.random.default_rng(100 + k), name)
            fake, _ = sf.make_fake(t, t, np.random.default_rng(k), size, swap=swap)
            gaps[name].append(np.abs(fake.astype(np.float32) - real.astype(np.float32))[inside].mean())
    assert np.mean(gaps["strong"]) > 1.5 * np.mean(gaps["subtle"]), gaps
    with pytest.raises(ValueError, match="artefacts must be one of subtle, strong"):
        sf.sample_swap(rng, "obvious")


def test_generate_dataset(tmp_path):
    out = tmp_path / "ds"
    paths = sf.generate_dataset(out, num_identities=8, frames_per_identity=2, size=64, seed=3,
                                fake_ratio=0.5, test_fraction=0.25, progress=False)
    assert set(paths) == {"all", "train", "test", "pretrain"}
    rows = {}
    for name, p in paths.items():
        p = Path(p)
        assert p.is_file() and p.parent == out
        with open(p, newline="", encoding="utf-8") as f:
            assert f.readline().strip() == ",".join(sf.MANIFEST_COLUMNS)
        rows[name] = _read_csv(p)
        assert rows[name], name
        for r in rows[name]:
            assert not Path(r["path"]).is_absolute()
            img = cv2.imread(str(p.parent / r["path"]))
            assert img is not None and img.shape == (64, 64, 3)
            lm = np.load(p.parent / r["landmarks"])
            assert lm.dtype == np.float32 and lm.shape == (68, 2)
            assert Path(r["landmarks"]).stem == Path(r["path"]).stem
            assert r["dataset"] == "synthetic"
    assert len(rows["all"]) == len(rows["train"]) + len(rows["test"])
    assert {r["label"] for r in rows["all"]} == {"0", "1"}
    assert {r["label"] for r in rows["pretrain"]} == {""}
    assert {r["method"] for r in rows["pretrain"]} == {"real"}
    assert {r["split"] for r in rows["pretrain"]} == {"train"}
    for r in rows["all"]:
        assert (r["label"] == "1") == (r["method"] == "synthetic_swap") == r["video"].startswith("fake_")

    def people(rs):      # every identity appearing: reals, fake targets and fake sources
        ids = set()
        for r in rs:
            parts = r["video"].split("_")
            ids.update(int(x) for x in parts[1:])
            assert r["identity"] == f"id{int(parts[1]):04d}"
        return ids
    train_ids, test_ids = people(rows["train"]), people(rows["test"])
    assert train_ids and test_ids and not (train_ids & test_ids)
    assert {r["label"] for r in rows["test"]} == {"0", "1"}
    # video ids unique per (identity, pair); frames of a video share the split
    vids = {}
    for r in rows["all"]:
        vids.setdefault(r["video"], set()).add(r["split"])
    assert all(len(v) == 1 for v in vids.values())
    # deterministic: byte-identical files
    out2 = tmp_path / "ds2"
    sf.generate_dataset(out2, num_identities=8, frames_per_identity=2, size=64, seed=3,
                        fake_ratio=0.5, test_fraction=0.25, progress=False)
    assert (out / "all.csv").read_bytes() == (out2 / "all.csv").read_bytes()
    for r in rows["all"][::3]:
        assert (out / r["path"]).read_bytes() == (out2 / r["path"]).read_bytes()


def test_generate_dataset_rejects_impossible_split(tmp_path):
    with pytest.raises(ValueError):
        sf.generate_dataset(tmp_path, num_identities=3, frames_per_identity=1, size=64,
                            fake_ratio=0.5, test_fraction=0.25, progress=False)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "synthetic.faces", "--out", str(out), "--num", "16",
                          "--size", "64", "--frames", "2", "--seed", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "all.csv" in res.stdout
    rows = _read_csv(out / "all.csv")
    assert 12 <= len(rows) <= 20
    assert (out / rows[0]["path"]).is_file()
    # --artefacts strong: the same faces (same seed), only the fakes differ
    res = subprocess.run([sys.executable, "-m", "synthetic.faces", "--out", str(tmp_path / "strong"),
                          "--num", "16", "--size", "64", "--frames", "2", "--seed", "1", "--artefacts", "strong"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for r in rows:
        same = (out / r["path"]).read_bytes() == (tmp_path / "strong" / r["path"]).read_bytes()
        assert same == (r["label"] == "0"), r["path"]


def test_cli_chooses_forgery_families(tmp_path, capsys):
    out = tmp_path / "fam"
    assert sf.main(["--out", str(out), "--num", "16", "--size", "64", "--frames", "1", "--no_progress",
                    "--families", "swap", "local_edit", "--test_families", "upsample"]) == 0
    methods = {r["method"] for r in _read_csv(out / "all.csv") if r["label"] == "1"}
    assert methods == {sf.family_method("swap"), sf.family_method("local_edit")}
    cross = {r["method"] for r in _read_csv(out / "families_test.csv") if r["label"] == "1"}
    assert sf.family_method("upsample") in cross and cross <= methods | {sf.family_method("upsample")}
    with pytest.raises(SystemExit) as e:
        sf.main(["--out", str(out), "--num", "16", "--families", "morph"])
    assert e.value.code == 2 and "--families: invalid choice: 'morph'" in capsys.readouterr().err
