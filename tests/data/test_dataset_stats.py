"""``vadice stats``: reproduces the generator's lesion table; cross-checked against scipy on real masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from vadice.cli import main
from vadice.data.dataset_stats import dataset_statistics, summarise_volumes, write_statistics
from vadice.data.hntsmrg import convert
from vadice.io import read_nifti



def _table(cohort):
    return json.loads((cohort / "cohort.json").read_text())


@pytest.mark.parametrize("timepoint", ["preRT", "midRT"])
def test_stats_reproduce_the_generator_table(small_cohort, timepoint):
    stats = dataset_statistics(small_cohort, progress=False)
    table = _table(small_cohort)
    group = stats["groups"][timepoint]
    assert group["n_cases"] == len(table["cases"])
    truth = [l for l in table["lesions"] if l["timepoint"] == timepoint]
    for case in group["cases"]:
        expected = [l for l in truth if str(l["case"]) == case["case"]]
        assert len(case["lesions"]) == len(expected)
        for got, want in zip(case["lesions"], expected):
            assert (got["label"], got["lesion"], got["voxels"]) == (want["label"], want["lesion"], want["voxels"])
            assert got["volume_ml"] == pytest.approx(want["volume_ml"], rel=1e-9)
            np.testing.assert_allclose(got["centroid_zyx"], want["centroid_zyx"], atol=1e-9)
    for name, label in (("GTVp", 1), ("GTVn", 2)):
        lab = group["labels"][name]
        vols = [l["volume_ml"] for l in truth if l["label"] == label]
        assert lab["components_total"] == len(vols)
        assert lab["cases_with_label"] == len({l["case"] for l in truth if l["label"] == label})
        if vols:
            assert lab["volumes_ml"]["median"] == pytest.approx(float(np.median(vols)))
            assert lab["volumes_ml"]["fraction_lt_1ml"] == pytest.approx(float(np.mean(np.array(vols) < 1)))
        assert sum(lab["components_per_case"].values()) == group["n_cases"]
    empty = {str(c["id"]) for c in table["cases"]} - {str(l["case"]) for l in truth}
    assert set(group["empty_cases"]) == empty


def test_stats_on_converted_dataset_match_the_source(small_cohort, tmp_path):
    dataset = convert(small_cohort, 1, 61, out=tmp_path, include_midrt=True, progress=False)
    from_source = dataset_statistics(small_cohort, progress=False)
    from_dataset = dataset_statistics(dataset, progress=False)
    assert from_dataset["layout"] == "nnunet"
    assert set(from_dataset["groups"]) == {"preRT", "midRT"}
    for tp in ("preRT", "midRT"):
        assert from_dataset["groups"][tp]["labels"] == from_source["groups"][tp]["labels"]


def _scipy_components(mask, label, structure):
    return ndimage.label(mask == label, structure=structure)


@pytest.mark.parametrize("connectivity", [26, 6])
def test_stats_on_real_case_2_agree_with_scipy(hntsmrg_case2, connectivity):
    stats = dataset_statistics(hntsmrg_case2, connectivity=connectivity, progress=False)
    assert stats["layout"] == "hntsmrg-case"
    structure = ndimage.generate_binary_structure(3, 3 if connectivity == 26 else 1)
    for tp in ("preRT", "midRT"):
        mask, geom = read_nifti(hntsmrg_case2 / tp / f"2_{tp}_mask.nii.gz")
        voxel_ml = geom.voxel_volume_mm3 / 1000.0
        group = stats["groups"][tp]
        for name, label in (("GTVp", 1), ("GTVn", 2)):
            comps, n = _scipy_components(mask, label, structure)
            sizes = np.sort(np.bincount(comps.ravel())[1:] * voxel_ml)
            got = np.sort([l["volume_ml"] for l in group["cases"][0]["lesions"] if l["label"] == label])
            assert len(got) == n > 0
            np.testing.assert_allclose(got, sizes, rtol=1e-12)
            assert group["labels"][name]["volumes_ml"]["count_lt_0_5ml"] == int(np.sum(sizes < 0.5))


def test_summary_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    v = rng.lognormal(0.7, 1.5, 57)
    s = summarise_volumes(v.tolist())
    assert [s["min"], s["q25"], s["median"], s["q75"], s["max"]] == pytest.approx(
        np.percentile(v, [0, 25, 50, 75, 100]).tolist())
    assert s["fraction_lt_1ml"] == pytest.approx(np.mean(v < 1)) and s["count_lt_0_5ml"] == int(np.sum(v < 0.5))
    assert summarise_volumes([])["median"] is None


def test_cli_stats_prints_table_and_writes_json_and_png(small_cohort, tmp_path, capsys, monkeypatch):
    out = tmp_path / "st"
    assert main(["stats", str(small_cohort), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "median" in text and "GTVn" in text and "preRT" in text and str(out) in text
    # Plain headers, each explained: no "per+case", and the percentage column says it is one.
    assert "per+case" not in text and "% <1ml" in text and "n <0.5ml" in text
    assert "per case: lesions per case with the label" in text
    stats = json.loads((out / "lesion_stats.json").read_text())
    assert set(stats["groups"]) == {"preRT", "midRT"}
    png = (out / "lesion_volumes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))
    # Default output folder: ./vadice_stats/<name>.
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "stats", str(small_cohort)]) == 0
    assert (tmp_path / "vadice_stats" / small_cohort.name / "lesion_stats.json").exists()


def test_cli_stats_bad_input(tmp_path, capsys):
    bad = tmp_path / "d" / "4" / "preRT"
    bad.mkdir(parents=True)
    mask = np.zeros((3, 4, 5), np.uint8)
    mask[1, 1, 1] = 3
    from vadice.io import Geometry, write_nifti

    write_nifti(mask, Geometry((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                bad / "4_preRT_mask.nii.gz")
    assert main(["-q", "stats", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "4_preRT_mask.nii.gz" in err and "label value(s) 3" in err
    assert not (tmp_path / "o").exists()
    assert main(["-q", "stats", str(tmp_path / "nothing")]) == 2


def test_write_statistics_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    from vadice.io import InputError

    with pytest.raises(InputError):
        write_statistics({"groups": {}}, tmp_path / "f")


# --------------------------------------------------------------------------- node cues


def _ellipsoid(shape, spacing, centre_mm, semi_axes_mm, rotation=np.eye(3)):
    zz, yy, xx = np.indices(shape).astype(float)
    pts = np.stack([zz, yy, xx], axis=-1) * np.asarray(spacing) - np.asarray(centre_mm)
    local = pts @ rotation  # columns of rotation: the ellipsoid's axes in (z, y, x)
    return np.sum((local / np.asarray(semi_axes_mm)) ** 2, axis=-1) <= 1.0


def test_axes_of_a_voxelised_ellipsoid_are_its_diameters():
    from vadice.data.node_cues import axes_mm

    spacing = (0.5, 0.4, 0.4)
    c, s = np.cos(0.6), np.sin(0.6)
    rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # tilted in the (y, x) plane
    region = _ellipsoid((40, 80, 80), spacing, (10.0, 16.0, 16.0), (4.0, 12.0, 6.0), rotation)
    # Hand-worked: a solid ellipsoid's variance along a semi-axis a is a^2 / 5, so the diameters come back.
    np.testing.assert_allclose(axes_mm(np.argwhere(region), spacing), [24.0, 12.0, 8.0], rtol=0.03)
    with pytest.raises(ValueError, match="at least 2 voxels"):
        axes_mm(np.zeros((1, 3)), spacing)


def test_measure_node_tells_a_hilum_from_necrosis():
    from vadice.data.node_cues import measure_node

    spacing = (0.5, 0.5, 0.5)
    shape, centre = (30, 30, 40), (7.5, 7.5, 10.0)
    node = _ellipsoid(shape, spacing, centre, (4.0, 4.0, 8.0))
    plain = np.where(node, 500.0, 300.0)
    hilum = plain.copy()
    # Fat entering from the surface on one side: the node's voxels more than 2 mm off its axis in y.
    zz, yy, xx = np.indices(shape) * 0.5
    hilum[node & (yy - centre[1] > 2.0)] = 900.0
    necrotic = plain.copy()
    necrotic[_ellipsoid(shape, spacing, centre, (2.0, 2.0, 3.0))] = 900.0
    got = {name: measure_node(img, node, spacing) for name, img in
           (("plain", plain), ("hilum", hilum), ("necrotic", necrotic))}
    assert (got["plain"]["hilum"], got["plain"]["necrosis"], got["plain"]["bright_voxels"]) == (False, False, 0)
    assert got["plain"]["heterogeneity"] == 0.0
    assert got["hilum"]["hilum"] and not got["hilum"]["necrosis"]
    assert got["necrotic"]["necrosis"] and not got["necrotic"]["hilum"]
    assert got["hilum"]["bright_voxels"] == int(np.sum(node & (yy - centre[1] > 2.0)))
    assert got["necrotic"]["axis_ratio"] == pytest.approx(2.0, rel=0.05)
    shape_only = measure_node(None, node, spacing)
    assert shape_only["hilum"] is None and shape_only["long_axis_mm"] == got["plain"]["long_axis_mm"]


def test_summarise_cues_counts_by_hand():
    from vadice.data.dataset_stats import summarise_cues

    def row(ratio, short, vol, hilum, necrosis, lat):
        return {"kind": "metastatic_node", "axis_ratio": ratio, "short_axis_mm": short, "volume_ml": vol,
                "hilum": hilum, "necrosis": necrosis, "heterogeneity": 0.2, "laterality": lat}

    rows = [row(1.2, 12.0, 0.5, False, True, "ipsilateral"), row(1.5, 8.0, 0.7, False, False, "ipsilateral"),
            row(2.5, 6.0, 2.0, True, False, "contralateral"), row(1.1, 20.0, 9.0, False, True, "midline")]
    k = summarise_cues(rows)["metastatic_node"]
    assert k["n"] == 4 and k["share_ratio_lt_2"] == 0.75 and k["share_short_axis_lt_10mm"] == 0.5
    assert k["axis_ratio"]["median"] == pytest.approx(1.35)
    assert k["necrosis_by_volume"] == {"<1 ml": {"n": 2, "share": 0.5}, "1-5 ml": {"n": 1, "share": 0.0},
                                       ">=5 ml": {"n": 1, "share": 1.0}}
    assert k["laterality"] == {"contralateral": 1, "ipsilateral": 2, "midline": 1}
    assert k["ipsilateral_share"] == pytest.approx(2 / 3)  # the midline node counts neither way


def test_cues_of_real_masks_without_images_are_shape_only(hntsmrg_case2):
    from vadice.data.dataset_stats import cue_statistics

    cues = cue_statistics(hntsmrg_case2, progress=False)
    assert not cues["audit"]
    assert {k: v["n"] for k, v in cues["kinds"].items()} == {"metastatic_node": 2, "primary": 1}
    assert all(r["hilum"] is None and r["laterality"] in (None, "unknown") for r in cues["nodes"])
    assert cues["kinds"]["metastatic_node"]["hilum_share"] is None


def test_cli_stats_cues_on_a_synthetic_cohort(small_cohort, tmp_path, capsys):
    out = tmp_path / "st"
    assert main(["-q", "stats", str(small_cohort), "--cues", "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "pre-RT node cues (masks + audit maps" in text and "normal_node" in text and "metastatic_node" in text
    stats = json.loads((out / "lesion_stats.json").read_text())
    table = _table(small_cohort)
    n_gtvn = sum(1 for l in table["lesions"] if l["timepoint"] == "preRT" and l["label"] == 2)
    n_normal = sum(1 for s in table["structures"] if s["kind"] == "normal_node" and s["voxels"] >= 2)
    assert stats["cues"]["kinds"]["metastatic_node"]["n"] == n_gtvn
    assert stats["cues"]["kinds"]["normal_node"]["n"] == n_normal


def test_cli_stats_cues_refuses_an_nnunet_dataset(small_cohort, tmp_path, capsys):
    dataset = convert(small_cohort, 1, 63, out=tmp_path, progress=False)
    assert main(["-q", "stats", str(dataset), "--cues", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nnU-Net dataset" in err
