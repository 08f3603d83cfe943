"""tools/cifar10_to_folders.py on a tiny tarball in the official format, in-process."""
import io
import os
import pickle
import tarfile

import cv2
import numpy as np
import pytest

from tools import cifar10_to_folders as convert_tool

NAMES = ["airplane", "automobile", "bird"]
PER_BATCH = 3  # images in each of the six batches: labels 0, 1, 2


def batch(seed: int):
    """One batch as the official pickles hold it: bytes keys, rows of R, G, B planes."""
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": list(range(PER_BATCH)),
            b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            b"filenames": [f"{seed}_{i}.png".encode() for i in range(PER_BATCH)]}


def make_tarball(path, members):
    """A .tar.gz holding cifar-10-batches-py/<name> for each {name: object} (pickled)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, value in members.items():
            payload = value if isinstance(value, bytes) else pickle.dumps(value, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def official_members():
    members = {f"data_batch_{i}": batch(i) for i in range(1, 6)}
    members["test_batch"] = batch(6)
    members["batches.meta"] = {b"label_names": [name.encode() for name in NAMES],
                               b"num_cases_per_batch": PER_BATCH}
    return members


def test_converts_every_image_losslessly_into_class_folders(tmp_path, capsys):
    members = official_members()
    red = np.zeros(3072, np.uint8)
    red[:1024] = 255  # the red plane only
    members["test_batch"][b"data"][0] = red
    tarball = make_tarball(tmp_path / "cifar-10-python.tar.gz", members)
    out = tmp_path / "cifar10"

    counts = convert_tool.main([tarball, str(out)])

    assert counts == {"train": 5 * PER_BATCH, "test": PER_BATCH}
    assert sorted(os.listdir(out)) == ["test", "train"]  # no staging folder left
    assert sorted(os.listdir(out / "train")) == sorted(NAMES)
    assert sorted(os.listdir(out / "train" / "bird")) == [f"{i:05d}.png" for i in range(2, 15, 3)]
    # Pixels survive exactly, in RGB order: the 4th training image is data_batch_2's first.
    first_of_batch_2 = members["data_batch_2"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    written = cv2.imread(str(out / "train" / "airplane" / "00003.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(written[..., ::-1], first_of_batch_2)
    # A pure red image is red on disk: OpenCV reads it back as B, G, R = 0, 0, 255.
    red_read = cv2.imread(str(out / "test" / "airplane" / "00000.png"), cv2.IMREAD_COLOR)
    assert red_read.shape == (32, 32, 3) and (red_read == [0, 0, 255]).all()
    assert "train: 15 images written" in capsys.readouterr().err  # progress


def test_a_non_empty_output_folder_is_kept_unless_overwrite(tmp_path, capsys):
    tarball = make_tarball(tmp_path / "c.tar.gz", official_members())
    out = tmp_path / "out"
    (out / "train" / "old").mkdir(parents=True)
    with pytest.raises(SystemExit) as stopped:
        convert_tool.main([tarball, str(out)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: {out} is not empty; give --overwrite "
                                               "to replace its train/ and test/")
    assert os.listdir(out / "train") == ["old"]

    convert_tool.main([tarball, str(out), "--overwrite"])
    assert sorted(os.listdir(out / "train")) == sorted(NAMES)  # the stale folder is gone


def unpickling_runs_code():
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    return Exploit()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "missing.tar.gz"), "no such file: "),
    (lambda tmp: (tmp / "x.tar.gz").write_bytes(b"not a tarball") and str(tmp / "x.tar.gz"),
     "is not a readable .tar.gz"),
    (lambda tmp: make_tarball(tmp / "x.tar.gz", {"readme": b"hi"}),
     "holds no cifar-10-batches-py/batches.meta"),
    (lambda tmp: make_tarball(tmp / "x.tar.gz", dict(official_members(), data_batch_3={b"data": 1})),
     "data_batch_3: expected 'data' of rows of 3072 bytes"),
    (lambda tmp: make_tarball(tmp / "x.tar.gz", dict(official_members(),
                                                     data_batch_1=unpickling_runs_code())),
     "cannot read cifar-10-batches-py/data_batch_1"),
], ids=["missing", "not-a-tarball", "not-cifar", "bad-batch", "code-in-pickle"])
def test_a_bad_tarball_is_one_line_and_exit_2(make, message, tmp_path, capsys):
    tarball = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        convert_tool.main([tarball, str(out)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not os.path.isdir(out) or os.listdir(out) == []  # nothing half-written left
