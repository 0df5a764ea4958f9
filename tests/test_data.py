"""Training data (nncompile/train/data.py): the digits set, .npz and .csv files mapped onto a
model's inputs, validation with clear errors before training, splits and normalisation."""
from __future__ import annotations

import os

import io
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import EXAMPLES, write_nn

import nncompile
from nncompile.errors import NNError
from nncompile.train.data import (
    Dataset,
    Normalizer,
    bind,
    label_input,
    load_digits,
    load_source,
    parse_mapping,
    scores_output,
    split,
)

CLASSIFIER = """
    const D = 4, C = 3
    input X: float[N, D]
    input y: int[N]
    param W: [D, C] = normal(std=0.01)
    param b: [C] = zeros()
    scores = X @ W + b
    output scores
    loss = softmax_cross_entropy(scores, y)
    minimize loss
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    path = write_nn(tmp_path_factory.mktemp("data"), "classifier.nn", CLASSIFIER)
    return nncompile.compile_and_load(path)


def arrays(n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((n, 4)), "y": rng.integers(0, 3, n)}


def npz(tmp_path: Path, **data: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **data)
    return path


def bind_file(path: Path, module: ModuleType, mapping: dict[str, str] | None = None) -> Dataset:
    return bind(load_source(str(path)), module, mapping)


def error_of(action) -> str:
    with pytest.raises(NNError) as info:
        action()
    return info.value.format()


# ---- the digits set ---------------------------------------------------------------------------

def test_digits_are_loaded_and_scaled() -> None:
    raw = load_digits()
    assert raw.arrays["X"].shape == (1797, 64) and raw.arrays["images"].shape == (1797, 8, 8)
    assert raw.arrays["X"].min() == 0.0 and raw.arrays["X"].max() == 1.0   # 0..16 scaled by 1/16
    assert sorted(np.unique(raw.arrays["y"])) == list(range(10))
    assert raw.default_test_split == 0.2 and raw.default_normalize == "image"


def test_digits_feed_a_model_whatever_its_input_names(tmp_path: Path) -> None:
    flat = nncompile.compile_and_load(write_nn(tmp_path, "flat.nn", """
        input pixels: float[N, 64]
        input label: int[N]
        param W: [64, 10] = zeros()
        scores = pixels @ W
        loss = softmax_cross_entropy(scores, label)
        minimize loss
    """))
    data = bind(load_digits(), flat)
    assert data.arrays["pixels"].shape == (1797, 64) and data.arrays["pixels"].dtype == np.float32
    assert data.labels == "label"
    images = nncompile.compile_and_load(write_nn(tmp_path, "images.nn", """
        input img: float[N, 8, 8]
        input y: int[N]
        param W: [64, 10] = zeros()
        scores = reshape(img, [N, 64]) @ W
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    """))
    assert bind(load_digits(), images).arrays["img"].shape == (1797, 8, 8)



@pytest.mark.parametrize("shape", ["[N, 64]", "[N, 1, 8, 8]", "[N, 8, 8]"])
def test_digits_feed_an_input_named_images_whatever_its_shape(tmp_path: Path, shape: str) -> None:
    """The digits set holds an array named images ([1797, 8, 8]); an input of that name that
    wants the pixels flat or as one-channel images takes them reshaped, row by row."""
    module = nncompile.compile_and_load(write_nn(tmp_path, "named.nn", f"""
        input images: float{shape}
        input y: int[N]
        param W: [64, 10] = zeros()
        scores = reshape(images, [N, 64]) @ W
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    """))
    raw = load_digits()
    fed = bind(raw, module).arrays["images"]
    assert fed.shape == (1797, *[int(d) for d in shape.strip("[]").split(", ")[1:]]) and fed.dtype == np.float32
    np.testing.assert_array_equal(fed.reshape(1797, 64), raw.arrays["X"].astype(np.float32))

def test_digits_feed_a_conv_net_as_one_channel_images() -> None:
    """examples/digits_cnn.nn's X: float[N, 1, 8, 8] takes the flat pixels reshaped, row by row."""
    raw = load_digits()
    X = bind(raw, nncompile.compile_and_load(EXAMPLES / "digits_cnn.nn")).arrays["X"]
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:, 0], raw.arrays["images"].astype(np.float32))


# ---- npz files ---------------------------------------------------------------------------------

def test_npz_arrays_bind_by_name_and_convert_dtypes(tmp_path: Path, module: ModuleType) -> None:
    data = arrays()
    data["X"] = (data["X"] * 10).astype(np.int16)    # integers are fine for a float input
    bound = bind_file(npz(tmp_path, **data, extra=np.zeros(3)), module)
    assert set(bound.arrays) == {"X", "y"} and len(bound) == 30
    assert bound.arrays["X"].dtype == np.float32 and bound.arrays["y"].dtype == np.int64
    assert bound.labels == "y"


def test_npz_map_names_arrays(tmp_path: Path, module: ModuleType) -> None:
    data = arrays()
    bound = bind_file(npz(tmp_path, images=data["X"], labels=data["y"]), module,
                      parse_mapping(["X=images,y=labels"]))
    np.testing.assert_array_equal(bound.arrays["y"], data["y"])


@pytest.mark.parametrize("make, mapping, message", [
    (lambda a: {"X": a["X"], "labels": a["y"]}, None,
     "no data for the model's input 'y' (int[N]): the file has arrays 'X', 'labels'; choose one with --map y=NAME"),
    (lambda a: a, {"y": "target"}, "--map y=target: the file has no array 'target' (it has 'X', 'y')"),
    (lambda a: a, {"Z": "X"}, "--map names 'Z', but the model's inputs are 'X', 'y'"),
    (lambda a: {**a, "X": a["X"][:, :3]}, None,
     "array 'X' for input 'X' has shape [30, 3], but X is float[N, 4] (axis 1 must be 4)"),
    (lambda a: {**a, "X": a["X"][:, :, None]}, None, "array 'X' for input 'X' has shape [30, 4, 1], but X is float[N, 4]"),
    (lambda a: {**a, "y": a["y"].astype(float)}, None,
     "array 'y' for input 'y' holds float64 values, but y is int[N]: save the class labels as integers"),
    (lambda a: {**a, "y": a["y"] > 0}, None, "array 'y' for input 'y' holds booleans, but y is int[N]"),
    (lambda a: {**a, "X": np.where(np.arange(30)[:, None] == 7, np.nan, a["X"])}, None,
     "array 'X' for input 'X': row 7 holds nan (4 NaN or infinite value(s) in all); every value must be finite"),
    (lambda a: {**a, "X": np.where(np.arange(30)[:, None] == 2, np.inf, a["X"])}, None, "row 2 holds inf (4 NaN"),
    (lambda a: {**a, "y": np.where(np.arange(30) == 5, 3, a["y"])}, None,
     "array 'y' for input 'y': row 5 holds the label 3, but the model has 3 classes: labels must lie in [0, 3)"),
    (lambda a: {**a, "y": np.where(np.arange(30) == 9, -1, a["y"])}, None, "row 9 holds the label -1"),
    (lambda a: {**a, "y": a["y"][:29]}, None, "array 'y' for input 'y' has 29 examples, but array 'X' for input 'X' has 30"),
    (lambda a: {**a, "X": np.array(["a"] * 30)}, None, "array 'X' for input 'X' holds <U1 values; it must hold real numbers"),
    (lambda a: {**a, "X": np.zeros((0, 4)), "y": np.zeros(0, dtype=int)}, None, "holds no examples"),
])
def test_bad_npz_data_is_reported_before_training(tmp_path: Path, module: ModuleType, make, mapping, message) -> None:
    path = npz(tmp_path, **make(arrays()))
    text = error_of(lambda: bind_file(path, module, mapping))
    assert text.startswith(f"nncompile: error: {path}: "), text
    assert message in text


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert error_of(lambda: load_source("nowhere.npz")).startswith("nncompile: error: nowhere.npz: data file not found")
    (tmp_path / "data.txt").write_text("1,2\n")
    assert "use a .npz or .csv file" in error_of(lambda: load_source(str(tmp_path / "data.txt")))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    assert "not a readable .npz file" in error_of(lambda: load_source(str(tmp_path / "broken.npz")))
    np.savez(tmp_path / "objects.npz", X=np.array([{"a": 1}], dtype=object))
    assert "object arrays" in error_of(lambda: load_source(str(tmp_path / "objects.npz")))
    assert "is a directory" in error_of(lambda: load_source(str(tmp_path)))


def damaged(path: Path, kind: str) -> Path:
    """An .npz file broken as files get broken: a flipped byte in a member, a deflate stream
    cut short, or a header that claims a billion rows that the member does not hold."""
    if kind == "flipped byte":
        np.savez(path, X=np.arange(1000.0), y=np.zeros(1000, dtype=int))
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 4] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif kind == "bad deflate stream":
        np.savez_compressed(path, X=np.arange(1000.0))
        blob = bytearray(path.read_bytes())
        blob[100:140] = bytes(40)
        path.write_bytes(bytes(blob))
    else:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (2_000_000_000, 64)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("X.npy", header.getvalue() + bytes(64))
    return path


@pytest.mark.parametrize("kind", ["flipped byte", "bad deflate stream", "header claims a billion rows"])
def test_a_damaged_npz_file_is_a_clean_error(kind: str, tmp_path: Path) -> None:
    path = damaged(tmp_path / "data.npz", kind)
    text = error_of(lambda: load_source(str(path)))
    assert text.startswith(f"nncompile: error: {path}: not a readable .npz file"), text


def test_an_npz_header_is_checked_against_the_size_of_its_member(tmp_path: Path) -> None:
    text = error_of(lambda: load_source(str(damaged(tmp_path / "data.npz", "header claims a billion rows"))))
    assert "array 'X' claims shape [2000000000, 64] (1,024,000,000,000 bytes), but its member holds 64 bytes" in text


def test_an_input_without_a_batch_dimension_is_refused(tmp_path: Path) -> None:
    fixed = nncompile.compile_and_load(write_nn(tmp_path, "fixed.nn", """
        input X: float[5, 4]
        param W: [4, 1] = zeros()
        loss = sum(X @ W)
        minimize loss
    """))
    text = error_of(lambda: bind_file(npz(tmp_path, X=np.zeros((5, 4))), fixed))
    assert "has no batch dimension" in text and "float[N, 64]" in text


def test_inputs_with_defaults_may_go_unfed(tmp_path: Path) -> None:
    module = nncompile.compile_and_load(write_nn(tmp_path, "defaults.nn", """
        input X: float[N, 2]
        input scale = 2.0
        param W: [2, 1] = zeros()
        loss = scale * sum(X @ W)
        minimize loss
    """))
    assert set(bind_file(npz(tmp_path, X=np.ones((3, 2))), module).arrays) == {"X"}


# ---- csv files ---------------------------------------------------------------------------------

def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_label_column_and_remaining_columns(tmp_path: Path, module: ModuleType) -> None:
    path = write_csv(tmp_path, "a,b,c,d,label\n1,2,3,4,0\n5,6,7,8,2\n9,10,11,12,1.0\n")
    bound = bind_file(path, module)
    np.testing.assert_array_equal(bound.arrays["X"], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    np.testing.assert_array_equal(bound.arrays["y"], [0, 2, 1])


def test_csv_column_ranges_and_headerless_files(tmp_path: Path, module: ModuleType) -> None:
    path = write_csv(tmp_path, "id,p0,p1,p2,p3,cls\n7,1,2,3,4,0\n8,5,6,7,8,1\n")
    bound = bind_file(path, module, parse_mapping(["X=p0:p3", "y=cls"]))
    np.testing.assert_array_equal(bound.arrays["X"], [[1, 2, 3, 4], [5, 6, 7, 8]])
    path = write_csv(tmp_path, "1,2,3,4,0\n5,6,7,8,2\n")
    bound = bind_file(path, module, {"y": "4", "X": "0:3"})
    np.testing.assert_array_equal(bound.arrays["y"], [0, 2])


@pytest.mark.parametrize("header", ["a,b,c,d,label\n", ""])
def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_first_cell(tmp_path: Path, module: ModuleType,
                                                                     header: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{header}1,2,3,4,0\n5,6,7,8,2\n".encode())
    bound = bind_file(path, module, None if header else {"y": "4", "X": "0:3"})
    np.testing.assert_array_equal(bound.arrays["X"], [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(bound.arrays["y"], [0, 2])


def test_a_csv_column_fills_a_one_wide_input(tmp_path: Path) -> None:
    regression = nncompile.compile_and_load(write_nn(tmp_path, "regression.nn", """
        input X: float[N, 2]
        input t: float[N, 1]
        param W: [2, 1] = zeros()
        loss = mean((X @ W - t) ** 2)
        minimize loss
    """))
    bound = bind_file(write_csv(tmp_path, "a,b,t\n1,2,3\n4,5,6\n"), regression, {"t": "t"})
    np.testing.assert_array_equal(bound.arrays["t"], [[3], [6]])
    np.testing.assert_array_equal(bound.arrays["X"], [[1, 2], [4, 5]])
    assert bound.labels is None


@pytest.mark.parametrize("text, mapping, message", [
    ("a,b,c,d,label\n1,2,x,4,0\n", None, "line 2, column 'c': 'x' is not a number"),
    ("a,b,c,d,label\n1,2,3,4,0\n1,2,3\n", None, "line 3 has 3 fields, but the file has 5 columns"),
    ("a,b,c,d,label\n1,2,3,4,0.5\n", None, "column 'label' for input 'y': line 2 holds 0.5, but y is int[N]"),
    ("a,b,c,d,label\n1,2,3,4,0\n1,,3,4,0\n", None,
     "the array of columns 'a', 'b', 'c', 'd' for input 'X': line 3, column 'b' holds an empty cell, and every example needs a "
     "number there"),
    ("a,b,label,c,d\n1,2,0,3,4\n\n1,2,1,nan,4\n", None,   # a blank line, and a label column between the features
     "the array of columns 'a', 'b', 'c', 'd' for input 'X': line 4, column 'c' holds nan (1 NaN or infinite"),
    ("a,b,c,d,label\n1,2,3,4,\n", None, "column 'label' for input 'y': line 2 holds an empty cell, but y is int[N]"),
    ("a,b,c,d,label\n1,2,3,4,99999999999999999999\n", None,
     "column 'label' for input 'y': line 2 holds 1e+20, far beyond any class label of y"),
    ("a,b,c,d,label\n1,2,3,4,0\n1,2,3,4,3\n", None, "column 'label' for input 'y': line 3 holds the label 3, but"),
    ('a,b,c,d,label\n"1\n",2,3,4,0\n1,2,3,4,3\n', None, "line 4 holds the label 3"),   # a record of two lines
    ('a,b,c,d,label\n1,2,3,4,0\n"1\n",2,3,4,3\n', None, "line 3 holds the label 3"),   # reported where it starts
    ('a,b,c,d,label\n"1\n",x,3,4,0\n', None, "data.csv:3:3: error: line 3, column 'b': 'x' is not a number"),
    ("a,b,c,label\n1,2,3,0\n", None, "the array of columns 'a', 'b', 'c' for input 'X' has shape [1, 3], but X is float[N, 4]"),
    ("a,a,c,d,label\n1,2,3,4,0\n", None, "a repeated column name 'a'"),
    ("a,b,c,d,label\n1,2,1e39,4,0\n", None, "line 2, column 'c' holds 1e+39, too large for X's float32 (at most "
     "3.403e+38)"),
    ("a,b,c,d,label\n", None, "has a header but no rows of data"),
    ("", None, "the csv file is empty"),
    ("a,b,c,d,label\n1,2,3,4,0\n", {"X": "a:zz"}, "--map X=a:zz: no column 'zz'"),
    ("a;b;c;d;label\n1;2;3;4;0\n", None, "'1;2;3;4;0' is not a number; its fields seem to be separated by ';', "
     "but nncompile reads comma-separated files"),
    ("1\t2\t3\t4\t0\n5\t6\t7\t8\t1\n", None, "seem to be separated by tabs"),
    ("a;b;c;d;label\n1,5;2;3;4;0\n", None, "line 2 has 2 fields, but the file has 1 columns; its fields seem to be "
     "separated by ';'"),   # decimal commas
])
def test_bad_csv_data(tmp_path: Path, module: ModuleType, text: str, mapping, message: str) -> None:
    path = write_csv(tmp_path, text)
    assert message in error_of(lambda: bind_file(path, module, mapping))


def test_a_semicolon_inside_one_cell_of_a_comma_separated_file_is_no_separator(tmp_path: Path,
                                                                                module: ModuleType) -> None:
    message = error_of(lambda: bind_file(write_csv(tmp_path, "a,b,c,d,label\n1,2,3;4,4,0\n"), module))
    assert "line 2, column 'c': '3;4' is not a number" in message and "separated" not in message


def test_a_float_target_in_a_csv_file_is_named_in_the_hint(tmp_path: Path) -> None:
    regression = nncompile.compile_and_load(write_nn(tmp_path, "reg.nn", """
        input X: float[N, 2]
        input t: float[N]
        param w: [2] = zeros()
        loss = mse(X @ w, t)
        minimize loss
    """))
    path = write_csv(tmp_path, "a,b,target\n1,2,3\n4,5,6\n")
    assert "the model's float inputs 'X' and 't' would both read columns of the file, which has columns 'a', 'b', " \
           "'target': name the target's, e.g. --map t=target ('X' then takes the remaining columns)" in \
           error_of(lambda: bind_file(path, regression))
    bound = bind_file(path, regression, {"t": "target"})
    assert bound.arrays["X"].tolist() == [[1, 2], [4, 5]] and bound.arrays["t"].tolist() == [3, 6]


def test_an_input_of_several_columns_is_shown_the_range_to_map(tmp_path: Path) -> None:
    two_targets = nncompile.compile_and_load(write_nn(tmp_path, "two.nn", """
        input x: float[N, 3]
        input t: float[N, 2]
        param W: [3, 2] = zeros()
        loss = mse(x @ W, t)
        minimize loss
    """))
    path = write_csv(tmp_path, "a,b,c,t1,t2\n1,2,3,4,5\n")
    assert "no data for the model's input 'x' (float[N, 3]): the file has columns 'a', 'b', 'c', 't1', 't2'; " \
           "choose its 3 columns with --map x=FIRST:LAST, e.g. --map x=a:c" in \
           error_of(lambda: bind_file(path, two_targets))
    bound = bind_file(path, two_targets, {"x": "a:c"})
    assert bound.arrays["x"].tolist() == [[1, 2, 3]] and bound.arrays["t"].tolist() == [[4, 5]]


def test_a_bad_csv_cell_is_shown_with_a_caret(tmp_path: Path, module: ModuleType) -> None:
    path = write_csv(tmp_path, "a,b,c,d,label\n\n1,2,3,4,0\n1,2,oops,4,0\n")
    lines = error_of(lambda: bind_file(path, module)).splitlines()
    assert lines[0] == f"{path}:4:5: error: line 4, column 'c': 'oops' is not a number"
    assert lines[1:] == ["    1,2,oops,4,0", "        ^~~~"]



@pytest.mark.parametrize("text, place, caret", [
    ('a,b,c,d,label\n"1","2.5",oops,4,0\n', "2:11", '    "1","2.5",oops,4,0\n              ^~~~'),
    ('a,b,c,d,label\n1,"say ""hi""",x,4,0\n', "2:3", '    1,"say ""hi""",x,4,0\n      ^~~~~~~~~~~~'),
    ('a,b,c,d,label\n1,"2\n",3,"4\r\n",bad\n', "4:3", '    ",bad\n      ^~~'),
    ('a,b,c,d,label\r1,2,3,"x\ry",0\r', "2:7", '    1,2,3,"x\n          ^~'),
    ('a,b,c,d,label\n1,x"y,3,4,0\n', "2:3", '    1,x"y,3,4,0\n      ^~~'),   # a quote inside a cell is a character
])
def test_a_bad_csv_cell_after_quoted_cells_gets_its_caret_under_it(tmp_path: Path, module: ModuleType, text: str,
                                                                   place: str, caret: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode())
    lines = error_of(lambda: bind_file(path, module)).splitlines()
    assert lines[0].startswith(f"{path}:{place}: error: line {place.split(':')[0]}, column "), lines
    assert "\n".join(lines[1:]) == caret


def test_a_bad_cell_read_from_a_pipe_is_reported_without_reading_the_pipe_again(tmp_path: Path, module) -> None:
    import threading

    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("a,b,c,d,label\n1,2,oops,4,0\n"))
    writer.start()
    message = error_of(lambda: bind_file(fifo, module))
    writer.join(timeout=10)
    assert message.startswith(f"{fifo}:2:5: error: line 2, column 'c': 'oops' is not a number"), message

def test_parse_mapping() -> None:
    assert parse_mapping(["X=images, y=labels", "z=col"]) == {"X": "images", "y": "labels", "z": "col"}
    assert parse_mapping(None) == {}
    assert "write INPUT=ARRAY" in error_of(lambda: parse_mapping(["X"]))
    assert "gives input 'X' twice" in error_of(lambda: parse_mapping(["X=a", "X=b"]))


def test_what_the_trainer_reads_from_a_module(module: ModuleType) -> None:
    assert label_input(module) == "y" and scores_output(module) == "scores"


# ---- splits and normalisation ---------------------------------------------------------------------

def test_splits_are_stratified_disjoint_and_fixed() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    data = Dataset({"X": np.arange(200.0)[:, None], "y": labels}, "test", "y")
    rest, held = split(data, 0.2, salt=1)
    assert len(held) == 40 and len(rest) == 160
    assert np.bincount(held.arrays["y"]).tolist() == [10, 6, 4, 20]
    ids = np.concatenate([rest.arrays["X"][:, 0], held.arrays["X"][:, 0]])
    assert sorted(ids) == list(range(200))
    again = split(data, 0.2, salt=1)[1]
    np.testing.assert_array_equal(again.arrays["X"], held.arrays["X"])
    other = split(data, 0.2, salt=2)[1]
    assert not np.array_equal(other.arrays["X"], held.arrays["X"])
    assert split(data, 0.0, salt=1)[1].arrays["X"].shape == (0, 1)
    assert "leaves none to train on" in error_of(lambda: split(Dataset({"X": np.zeros((1, 1))}, "t"), 0.9, 1))


@pytest.mark.parametrize("n, fraction", [(90, 0.01), (2, 0.4), (5, 0.1)])
def test_a_split_asked_for_holds_at_least_one_example(n: int, fraction: float) -> None:
    """0.01 of 90 examples (or of each class of 30) rounds to none: one is held out all the same."""
    data = Dataset({"X": np.arange(float(n))[:, None], "y": np.arange(n) % 3}, "test", "y")
    rest, held = split(data, fraction, salt=1)
    assert len(held) == 1 and len(rest) == n - 1
    assert len(split(Dataset({"X": np.zeros((1, 1))}, "t"), 0.1, 1)[1]) == 0, "one example stays to train on"


def test_normalizer_uses_training_statistics_only() -> None:
    rng = np.random.default_rng(0)
    train = Dataset({"X": rng.normal(3.0, 2.0, (500, 3)).astype(np.float32), "y": np.zeros(500, int)}, "t", "y")
    test = Dataset({"X": np.full((2, 3), 3.0, dtype=np.float32), "y": np.zeros(2, int)}, "t", "y")
    for method in ("center", "standardize", "image"):
        norm = Normalizer.fit(method, train)
        out = norm.apply(train).arrays["X"]
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_array_equal(norm.apply(test).arrays["y"], test.arrays["y"])   # labels untouched
        assert set(norm.arrays()) == {"mean/X", "scale/X"}
    np.testing.assert_allclose(Normalizer.fit("standardize", train).apply(train).arrays["X"].std(axis=0), 1, rtol=1e-4)
    image = Normalizer.fit("image", train)
    assert len(set(image.scale["X"].tolist())) == 1       # one scale for every pixel
    assert Normalizer.fit("none", train).apply(train) is train
    assert "unknown normalisation" in error_of(lambda: Normalizer.fit("whiten", train))
