import pytest

from sfmkit.errors import SfmkitError
from sfmkit.io.pairs import exhaustive_pairs, make_pairs, read_pairs, sequential_pairs, write_pairs


def test_generators():
    names = ["a", "b", "c", "d"]
    assert len(exhaustive_pairs(names)) == 6
    assert sequential_pairs(names, 2) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]
    with pytest.raises(SfmkitError):
        sequential_pairs(names, 0)


def test_pairs_file_round_trip_dedup_and_unknown(tmp_path):
    path = write_pairs(tmp_path / "p.txt", [("a.jpg", "b.jpg"), ("my photo.jpg", "a.jpg")])
    path.write_text(path.read_text() + "b.jpg a.jpg\n# comment\na.jpg a.jpg\nx.jpg a.jpg\n")
    pairs = read_pairs(path, {"a.jpg", "b.jpg", "my photo.jpg"})
    assert pairs == [("a.jpg", "b.jpg"), ("my photo.jpg", "a.jpg")]


def test_bad_pairs_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a b c\n")
    with pytest.raises(SfmkitError, match="two image names"):
        read_pairs(bad)
    with pytest.raises(SfmkitError, match="neither"):
        make_pairs("nonsense", ["a", "b"], tmp_path)
    assert make_pairs("sequential:1", ["a", "b", "c"], tmp_path).read_text().split("\n")[:2] == ["a b", "b c"]


def test_names_round_trip_exactly(tmp_path):
    names = [" lead.jpg", "trail .jpg", "#hash.jpg", "  #indented.jpg", "a b.jpg", "nb\u00a0sp.jpg", "x.jpg"]
    pairs = exhaustive_pairs(names)
    assert read_pairs(write_pairs(tmp_path / "p.txt", pairs), names) == pairs


def test_names_a_pairs_file_cannot_hold_are_refused(tmp_path):
    with pytest.raises(SfmkitError, match="a tab"):
        write_pairs(tmp_path / "p.txt", [("a\tb.jpg", "c.jpg")])


def test_hand_written_pairs_files_stay_readable(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a.jpg b.jpg\t\n \t \n  # a comment\nc.jpg\td.jpg \r\n# another\n")
    assert read_pairs(path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]) == [("a.jpg", "b.jpg"), ("c.jpg", "d.jpg")]


def test_unknown_pairs_warn_once(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("a.jpg b.jpg\na.jpg gone.jpg\n")
    for _ in range(3):
        assert read_pairs(path, ["a.jpg", "b.jpg"]) == [("a.jpg", "b.jpg")]
    assert sum("gone.jpg" in r.getMessage() for r in caplog.records) == 1
