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
