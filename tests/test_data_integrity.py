"""Tests of bench.data on damaged or unofficial files: validation names the file, torchvision's checksums and
`verify: false` (recorded in each row), and `--download` without a network."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import struct
import urllib.error
import urllib.request

import pytest
import torchvision.datasets as tvd

from bench import data
from bench.data import DataContext, check_available, load_dataset
from bench.errors import UserError
from bench.runner.context import RunContext, load_task_dataset
from tests.dataset_files import (
    assert_cifar10_round_trip,
    dataset_suite,
    nchw_uint8,
    run_cli,
    validate_error,
    write_cifar10,
    write_mnist_files,
    write_pickle,
    write_stl10,
    write_svhn,
)

# ---- damaged files fail validation, with their path ----------------------------------------------



@pytest.mark.parametrize("verify", [True, False])
def test_truncated_cifar10_batch_fails_validate(tmp_path, write_suite, capsys, verify):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:4000])  # a download cut short: 4,000 of its ~6,400 bytes
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10", verify), tmp_path)
    # The damaged file, what is wrong with it, and nothing about the good ones; verify: false skips only the MD5s.
    assert f"dataset 'cifar10': {batch}: truncated or corrupt (UnpicklingError: pickle data was truncated)" in err
    assert "data_batch_1" not in err and "MD5" not in err and "--download" in err


def test_wrong_cifar_shapes_fail_validate(tmp_path, write_suite, capsys):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "data_batch_2", {"data": nchw_uint8(2, 32).reshape(2, 3072), "labels": [1, 2, 3]})
    write_pickle(folder / "test_batch", {"data": nchw_uint8(3, 16).reshape(3, 768), "labels": [1, 2, 3]})
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10", verify=False), tmp_path)
    assert f"{folder / 'data_batch_2'}: corrupt CIFAR batch: 2 images but 3 labels" in err
    assert f"{folder / 'test_batch'}: corrupt CIFAR batch: data is uint8 (3, 768), expected uint8 (N, 3072)" in err


@pytest.mark.parametrize("file, damage, message", [
    ("train-images-idx3-ubyte", lambda raw: b"\x00\x00\x0d\x03" + raw[4:],
     "not an idx file of unsigned bytes (it starts 00000d03"),
    ("train-images-idx3-ubyte", lambda raw: raw[:4] + struct.pack(">I", 13) + raw[8:],
     "truncated or corrupt: its header says 13x28x28 bytes of data (10208 bytes in all), the file has 9424"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:-100], "truncated or corrupt: its header says 7x28x28"),
    ("t10k-images-idx3-ubyte", lambda raw: raw[:4] + struct.pack(">III", 7, 32, 32) + raw[16:],
     "corrupt idx header: 32x32 images, expected 28x28"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:3] + b"\x03" + raw[4:],
     "corrupt idx header: 3 dimensions, expected 1"),
    ("train-labels-idx1-ubyte", lambda raw: raw[:4] + struct.pack(">I", 11) + raw[8:-1],
     "12 images, but {folder}/train-labels-idx1-ubyte has 11 labels"),
])
def test_corrupt_idx_file_fails_validate(tmp_path, write_suite, capsys, file, damage, message):
    folder = tmp_path / "MNIST" / "raw"
    write_mnist_files(folder, compress=False)
    (folder / file).write_bytes(damage((folder / file).read_bytes()))
    err = validate_error(capsys, dataset_suite(write_suite, "mnist"), tmp_path)
    assert f"dataset 'mnist': {folder / file}: " in err or f"{folder}/train-images-idx3-ubyte: 12 images" in err
    assert message.format(folder=folder) in err


def test_truncated_debian_fashion_mnist_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data.torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    write_mnist_files(tmp_path / "debian", compress=True)
    damaged = tmp_path / "debian" / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    with pytest.raises(UserError) as err:
        check_available("fashion-mnist", {}, DataContext(tmp_path))
    assert str(err.value).startswith(f"dataset 'fashion-mnist': {damaged}: truncated or corrupt")
    assert "reinstall the Debian package dataset-fashion-mnist" in str(err.value)
    with pytest.raises(UserError, match=f"{damaged}: truncated or corrupt gzip file"):
        data.formats._read_idx_gz(damaged)  # the loader's own reader says the same, without a traceback


def test_truncated_svhn_and_stl10_files(tmp_path):
    write_svhn(tmp_path)
    mat = tmp_path / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:5000])  # X's data cut short: y is gone
    with pytest.raises(UserError, match=f"{mat}: truncated or corrupt: no variable y"):
        check_available("svhn", {}, DataContext(tmp_path))

    write_stl10(tmp_path)
    x = tmp_path / "stl10_binary" / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-1000])
    with pytest.raises(UserError, match=f"{x}: truncated or corrupt: {3 * 27648 - 1000} bytes, but .*train_y.bin "
                                        f"has 3 labels"):
        check_available("stl10", {}, DataContext(tmp_path))


# ---- torchvision's checksums and verify: false ---------------------------------------------------

def test_unofficial_copy_fails_with_its_md5_and_loads_with_verify_false(tmp_path, write_suite, capsys):
    written = write_cifar10(tmp_path)  # the real format, but not the official bytes
    folder = tmp_path / "cifar-10-batches-py"
    official = dict(tvd.CIFAR10.train_list)["data_batch_1"]
    err = validate_error(capsys, dataset_suite(write_suite, "cifar10"), tmp_path)
    got = hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest()
    assert f"{folder / 'data_batch_1'} has MD5 {got}, not torchvision's {official}; data_batch_2, " in err
    assert "data_batch_5, test_batch, batches.meta differ too: not the official files" in err
    assert "to use this copy as it is, set `verify: false` on this dataset entry" in err
    with pytest.raises(UserError, match="set `verify: false`"):  # a load that was not validated first says the same
        load_dataset("cifar10", {}, DataContext(tmp_path))

    suite = dataset_suite(write_suite, "cifar10", verify=False)
    code, out, err = run_cli(capsys, "validate", suite, "--data-dir", tmp_path)
    assert code == 0 and "ok" in out and not err
    # What a task loads: the plan's dataset config carries verify: false to the loader, past torchvision's MD5s.
    from bench.config import load_suite
    from bench.plan import build_plan

    train = build_plan(load_suite(suite)).by_kind("train")[0]
    assert train.config["dataset"]["verify"] is False
    run_ctx = RunContext(store_dir=tmp_path / "store", data=DataContext(tmp_path), device="cpu")
    assert_cifar10_round_trip(load_task_dataset({**train.config["dataset"], "train_size": None}, run_ctx), written)
    with pytest.raises(UserError, match="verify: false"):  # and without it, the same files are refused
        load_task_dataset({**train.config["dataset"], "verify": True}, run_ctx)


def test_unverified_loader_is_torchvision_without_file_md5s():
    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.SVHN, tvd.STL10):
        unverified = data.checksums._unverified(cls)
        assert issubclass(unverified, cls) and unverified.__name__ == cls.__name__
        assert data.checksums._torchvision_md5s(unverified) == {} and len(data.checksums._torchvision_md5s(cls)) >= 2
        assert getattr(unverified, "tgz_md5", None) == getattr(cls, "tgz_md5", None)  # downloads stay verified
    assert data.checksums._unverified(tvd.MNIST) is tvd.MNIST  # nothing to skip: torchvision checks no raw MNIST file


def test_verify_false_is_recorded_in_each_row(tmp_path, write_suite, capsys):
    write_cifar10(tmp_path)
    suite = write_suite("""\
name: unverified
device: cpu
datasets:
  - name: cifar10
    verify: false
defenses:
  - name: undefended
    params: {epochs: 1, batch_size: 8}
attacks:
  - name: fgsm
    budgets: [0.1]
""")
    code, _, err = run_cli(capsys, "run", suite, "--store", tmp_path / "store", "--leaderboard", tmp_path / "board",
                           "--data-dir", tmp_path, "--quiet")
    assert code == 0, err
    with sqlite3.connect(tmp_path / "store" / "advbench.sqlite") as db:
        rows = [json.loads(v) for (v,) in db.execute("SELECT versions FROM results")]
        tasks = [json.loads(v) for (v,) in db.execute("SELECT versions FROM tasks")]
    assert len(rows) == 2 and len(tasks) == 4  # clean and fgsm rows; the train, craft and two score tasks
    for versions in rows + tasks:
        assert versions["data:cifar10"] == "local copy, checksums not verified (verify: false)"
        assert "torch" in versions


# ---- --download without a network ----------------------------------------------------------------

@pytest.mark.parametrize("name, url", [
    ("cifar10", tvd.CIFAR10.url),
    ("svhn", tvd.SVHN.split_list["train"][0]),
    ("mnist", tvd.MNIST.mirrors[0]),  # torchvision's own message: each mirror it tried for the file, and the answer
])
def test_offline_download_says_it_failed_and_why(tmp_path, monkeypatch, name, url):
    def offline(request, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as err:
        load_dataset(name, {}, DataContext(tmp_path, download=True))
    message = str(err.value)
    assert message.startswith(f"dataset {name!r}: --download failed: ") and "\n" not in message
    assert url in message and "Temporary failure in name resolution" in message
    assert "rerun with --download" not in message and "check this machine's network connection" in message
