"""The judge manifest and the importers of FindingEmo, EMOTIC and SAM/OASIS norm tables.

Each importer test writes a small file in the data set's published layout (header and value
formats as the data sets ship them) and checks the converted [-3, 3] labels.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from emofeedback2.cli import main
from emofeedback2.engines.emotion_space import convert_scale, EmotionValueError
from emofeedback2.training.judge.data import ManifestError, read_manifest, write_manifest
from emofeedback2.training.judge.importers import import_emotic, import_findingemo, import_norm_table


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (28, 28), (value, value, value)).save(path)
    return path


def test_csv_manifest_converts_every_scale_through_emotion_space(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        _png(tmp_path / "img" / f"{name}.png")
    (tmp_path / "m.csv").write_text(
        "image,valence,arousal,scale,split\n"
        "img/a.png,1.5,-0.5,,train\n"          # va3 by default
        "img/b.png,9,1,sam9,train\n"            # SAM 1..9 → +3, -3
        "img/c.png,5.5,1,emotic10,test\n"       # EMOTIC 1..10 → 0, -3
        "img/d.png,-3,6,findingemo,\n"          # FindingEmo: V as is, A 0..6 → +3
        "img/e.png,4,7,likert7,test\n",         # OASIS 1..7 → 0, +3
        encoding="utf-8",
    )
    manifest = read_manifest(tmp_path / "m.csv")
    got = [(s.image.name, round(s.valence, 6), round(s.arousal, 6), s.split) for s in manifest.samples]
    assert got == [("a.png", 1.5, -0.5, "train"), ("b.png", 3.0, -3.0, "train"), ("c.png", 0.0, -3.0, "test"),
                   ("d.png", -3.0, 3.0, ""), ("e.png", 0.0, 3.0, "test")]
    assert manifest.samples[0].image == tmp_path / "img" / "a.png"  # relative to the manifest's folder
    # rows without a split belong to every split
    assert [s.image.name for s in manifest.split("train")] == ["a.png", "b.png", "d.png"]


def test_jsonl_manifest_and_write_round_trip(tmp_path):
    image = _png(tmp_path / "pics" / "x.png")
    out = write_manifest(tmp_path / "sub" / "m.jsonl", [{"image": image, "valence": 2, "arousal": 8, "scale": "sam9",
                                                          "split": "test"}])
    row = json.loads(out.read_text().splitlines()[0])
    assert row["image"] == "../pics/x.png"  # written relative to the manifest
    sample = read_manifest(out).samples[0]
    assert sample.image.resolve() == image.resolve()
    assert (sample.valence, sample.arousal) == pytest.approx((-2.25, 2.25))


def test_bad_rows_name_the_file_and_line_or_are_skipped_and_counted(tmp_path):
    _png(tmp_path / "ok.png")
    path = tmp_path / "m.csv"
    path.write_text("image,valence,arousal,scale\nok.png,0,0,\nok.png,abc,0,\nmissing.png,0,0,\nok.png,12,1,sam9\n"
                    "ok.png,0,0,percent\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.csv line 3: valence='abc' is not a number.*--skip-bad"):
        read_manifest(path)
    manifest = read_manifest(path, skip_bad=True)
    assert len(manifest.samples) == 1 and len(manifest.skipped) == 4
    assert "line 4" in manifest.skipped[1] and "does not exist" in manifest.skipped[1]
    assert "SAM" in manifest.skipped[2] and "line 5" in manifest.skipped[2]
    assert "unknown" in manifest.skipped[3]


def test_discrete_label_sets_are_refused(tmp_path):
    path = tmp_path / "emoset.csv"
    path.write_text("image,emotion\na.jpg,amusement\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="discrete emotion categories but no valence/arousal"):
        read_manifest(path)
    assert main(["judge-data", "import", "emoset"]) == 2


def test_missing_columns_and_unknown_scale_are_clear_errors(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,v,a\nx.png,0,0\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="no image, valence, arousal column"):
        read_manifest(path)
    with pytest.raises(EmotionValueError, match="unknown rating scale"):
        convert_scale(0, 0, "percent")


# --- importers, each on a file in the data set's published layout ----------------------------------

FINDINGEMO_HEADER = "user,image_path,reject,tag,age,valence,arousal,emotion,dec_factors,ambiguity,fmri_candidate,datetime\n"


def test_findingemo_importer(tmp_path):
    root = tmp_path / "findingemo"
    _png(root / "Run_1" / "Loving" / "a.jpg")
    _png(root / "Run_2" / "Sad" / "b.jpg")
    ann = tmp_path / "annotations_single.ann"
    ann.write_text(
        FINDINGEMO_HEADER
        + "u1,/Run_1/Loving/a.jpg,0,Adults,Adults,2,5,Joy,\"Facial expression,Bodily expression\",1,0,2023-01-01 10:00:00\n"
        + "u2,/Run_2/Sad/b.jpg,0,Adults,Adults,-3,0,Sadness,Context,2,0,2023-01-02 11:00:00\n"
        + "u3,/Run_2/Sad/gone.jpg,1,,,0,0,,,0,0,2023-01-03 12:00:00\n",  # rejected: not a label
        encoding="utf-8",
    )
    result = import_findingemo(ann, root, tmp_path / "fe.csv")
    assert result.images == 2 and not result.skipped
    rows = read_manifest(result.manifest).samples
    assert [(r.image.name, r.valence, r.arousal) for r in rows] == [("a.jpg", 2.0, 2.0), ("b.jpg", -3.0, -3.0)]


def test_findingemo_bad_row_error_and_skip(tmp_path):
    root = tmp_path / "fe"
    _png(root / "Run_1" / "x" / "a.jpg")
    ann = tmp_path / "annotations_single.ann"
    ann.write_text(FINDINGEMO_HEADER + "u,/Run_1/x/a.jpg,0,,,2,9,Joy,,0,0,\nu,/Run_1/x/a.jpg,0,,,1,3,Joy,,0,0,\n",
                   encoding="utf-8")
    with pytest.raises(ManifestError, match=r"annotations_single\.ann line 2: .*outside FindingEmo"):
        import_findingemo(ann, root, tmp_path / "m.csv")
    result = import_findingemo(ann, root, tmp_path / "m.csv", skip_bad=True)
    assert result.images == 1 and len(result.skipped) == 1


EMOTIC_HEADER = ",Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age\n"


def test_emotic_importer_means_people_per_image_and_takes_split_from_file_name(tmp_path):
    root = tmp_path / "emotic"
    _png(root / "mscoco" / "images" / "COCO_1.jpg")
    _png(root / "emodb_small" / "images" / "e2.jpg")
    train = tmp_path / "annot_arrs_train.csv"
    train.write_text(
        EMOTIC_HEADER
        + "0,mscoco/images,COCO_1.jpg,\"[640, 480]\",\"[10, 20, 200, 400]\",\"['Happiness', 'Pleasure']\",\"[10, 7, 6]\",Male,Adult\n"
        + "1,mscoco/images,COCO_1.jpg,\"[640, 480]\",\"[300, 20, 500, 400]\",\"['Peace']\",\"[8, 1, 5]\",Female,Adult\n",
        encoding="utf-8",
    )
    test = tmp_path / "annot_arrs_test.csv"
    test.write_text(EMOTIC_HEADER + "0,emodb_small/images,e2.jpg,\"[300, 200]\",\"[1, 2, 3, 4]\",\"['Fear']\",\"[1, 10, 2]\",Male,Kid\n",
                    encoding="utf-8")
    result = import_emotic([train, test], root, tmp_path / "emotic.jsonl")
    rows = read_manifest(result.manifest).samples
    assert result.images == 2
    first, second = rows
    assert first.split == "train" and second.split == "test"
    assert (first.valence, first.arousal) == pytest.approx((-3 + 8 * 6 / 9, -1.0))  # mean (9, 4) on 1..10
    assert (second.valence, second.arousal) == pytest.approx((-3.0, 3.0))


def test_emotic_matlab_file_is_refused_with_the_fix(tmp_path):
    mat = tmp_path / "Annotations.mat"
    mat.write_bytes(b"MATLAB 5.0")
    with pytest.raises(ManifestError, match="annot_arrs_train/val/test.csv"):
        import_emotic([mat], tmp_path, tmp_path / "m.csv")


def test_oasis_and_naps_style_norm_tables(tmp_path):
    images = tmp_path / "oasis" / "images"
    _png(images / "Acorns 1.jpg")
    _png(images / "Dog 6.jpg")
    oasis = tmp_path / "OASIS.csv"
    oasis.write_text(",Theme,Category,Source,Valence_mean,Valence_SD,Valence_N,Arousal_mean,Arousal_SD,Arousal_N\n"
                     "1,Acorns 1,Object,Pixabay,4.686275,0.954203,102,2.346535,1.60272,101\n"
                     "2,Dog 6,Animal,Pixabay,7,0.3,100,1,1.0,100\n", encoding="utf-8")
    result = import_norm_table(oasis, images, tmp_path / "oasis.csv", scale="likert7", test_fraction=0.5)
    rows = read_manifest(result.manifest).samples
    assert [r.image.name for r in rows] == ["Acorns 1.jpg", "Dog 6.jpg"]
    assert rows[0].valence == pytest.approx(0.686275, abs=1e-5)  # (4.686 - 4) on 1..7 → [-3, 3] is 1:1
    assert (rows[1].valence, rows[1].arousal) == pytest.approx((3.0, -3.0))
    assert sorted(r.split for r in rows) == ["test", "train"]
    # Without --scale the OASIS layout (Theme column) is read on 1..7, not silently on SAM 1..9.
    auto = import_norm_table(oasis, images, tmp_path / "oasis_auto.csv")
    assert auto.scale == "likert7"
    assert [(r.valence, r.arousal) for r in read_manifest(auto.manifest).samples] == \
        [(r.valence, r.arousal) for r in rows]

    naps_dir = tmp_path / "naps"
    _png(naps_dir / "Animals_001_h.jpg")
    naps = tmp_path / "naps.csv"
    naps.write_text("ID,Category,Nr,V_H,Valence_M,Valence_SD,Arousal_M,Arousal_SD\n"
                    "Animals_001_h,Animals,1,H,9,1.1,5,2.0\n", encoding="utf-8")
    row = read_manifest(import_norm_table(naps, naps_dir, tmp_path / "naps_m.csv").manifest).samples[0]
    assert (row.valence, row.arousal) == pytest.approx((3.0, 0.0))
    with pytest.raises(ManifestError, match=r"naps\.csv line 2: .*outside 1\.\.7"):
        import_norm_table(naps, naps_dir, tmp_path / "x.csv", scale="likert7")


def test_judge_data_cli_import_and_check(tmp_path, capsys):
    root = tmp_path / "fe"
    _png(root / "R" / "a.jpg")
    ann = tmp_path / "annotations_single.ann"
    ann.write_text(FINDINGEMO_HEADER + "u,/R/a.jpg,0,,,1,3,Joy,,0,0,\nu,/R/none.jpg,0,,,1,3,Joy,,0,0,\n", encoding="utf-8")
    out = tmp_path / "m.csv"
    assert main(["judge-data", "import", "findingemo", "--annotations", str(ann), "--images", str(root), "--out", str(out)]) == 2
    assert "line 3" in capsys.readouterr().err
    assert main(["judge-data", "import", "findingemo", "--annotations", str(ann), "--images", str(root), "--out", str(out),
                 "--skip-bad"]) == 0
    assert "1 images, 1 bad rows skipped" in capsys.readouterr().out
    assert main(["judge-data", "check", str(out)]) == 0
    assert "1 rows" in capsys.readouterr().out
