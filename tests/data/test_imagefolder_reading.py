"""imagefolder listing and reading, without torchvision (PIL comes with torch's dependencies; the
transforms are faked where ``load_dataset`` is run).

A symbolic link loop in a class folder read its images 41 times (and leaked them into the held-out
val split), 16-bit greyscale saturated to white, a checkpoint's held-out split could not see that the
folder changed, a damaged val image was found only after the dense training, a decompression bomb was
a raw PIL traceback, and .gif files, loose files and hidden folders were dropped or made classes silently.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from prunetune.data import load_dataset
from prunetune.data import imagefolder as imagefolder_mod
from prunetune.data.imagefolder import list_images, read_image
from prunetune.exceptions import DataError

Image = pytest.importorskip("PIL.Image")


def _png(path: Path, size: int = 4, color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


class _AnyTransform:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: (name, args)


@pytest.fixture()
def fake_tv(monkeypatch):
    monkeypatch.setattr(imagefolder_mod, "_torchvision", lambda: SimpleNamespace(transforms=_AnyTransform()))


def _classes(root: Path, n: int, split: str = "train") -> None:
    for cls in ("a", "b", "c"):
        for i in range(n):
            _png(root / split / cls / f"{i}.png")


def test_a_symlink_loop_in_a_class_folder_is_one_line_not_duplicates(tmp_path) -> None:
    _classes(tmp_path, 3)
    os.symlink(".", tmp_path / "train" / "a" / "loop")
    os.symlink("..", tmp_path / "train" / "b" / "up")  # the second loop hung, memory growing
    with pytest.raises(DataError, match=r"^imagefolder folder .*train/a/loop is .*train/a again \(a symbolic link "
                                        r"loop, or two links to one folder\).*; remove the link$"):
        list_images(tmp_path / "train")


def test_a_linked_class_folder_is_read_once(tmp_path) -> None:
    _classes(tmp_path, 2)
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "d")  # one folder as two classes
    with pytest.raises(DataError, match=r"train/d is .*train/a again"):
        list_images(tmp_path / "train")
    os.unlink(tmp_path / "train" / "d")
    elsewhere = tmp_path / "elsewhere" / "d"
    _png(elsewhere / "0.png")
    os.symlink(elsewhere, tmp_path / "train" / "d")  # a linked folder, read once, is fine
    classes, samples = list_images(tmp_path / "train")
    assert classes == ["a", "b", "c", "d"] and len(samples) == 7


def test_a_val_or_test_folder_linked_to_a_training_folder_is_refused(tmp_path, fake_tv) -> None:
    _classes(tmp_path, 2)
    _classes(tmp_path, 2, "val")
    os.symlink(tmp_path / "train", tmp_path / "test")  # the test split: the training images
    with pytest.raises(DataError, match=r"test is .*train again .*training and held-out images at once"):
        load_dataset("imagefolder", root=tmp_path, image_size=8)
    os.unlink(tmp_path / "test")
    os.symlink(tmp_path / "val", tmp_path / "test")  # val and test may share their images
    assert len(load_dataset("imagefolder", root=tmp_path, image_size=8).test) == 6
    os.rename(tmp_path / "val" / "c", tmp_path / "c-held")
    os.symlink(tmp_path / "train" / "c", tmp_path / "val" / "c")  # val's class c: train's images
    with pytest.raises(DataError, match=r"val/c is .*train/c again .*training and held-out images at once"):
        load_dataset("imagefolder", root=tmp_path, image_size=8)


def test_a_link_to_a_missing_folder_is_one_line_not_a_dropped_class(tmp_path) -> None:
    _classes(tmp_path, 2)
    _png(tmp_path / "disk" / "d" / "0.png")
    os.symlink(tmp_path / "disk" / "d", tmp_path / "train" / "d")
    assert list_images(tmp_path / "train")[0] == ["a", "b", "c", "d"]
    os.rename(tmp_path / "disk", tmp_path / "unmounted")  # skipped, class d was gone and later labels moved
    with pytest.raises(DataError, match=r"^imagefolder .*train/d is a link to .*disk/d, which does not exist; "
                                        r"mount or restore its target, or remove the link$"):
        list_images(tmp_path / "train")
    os.symlink(tmp_path / "gone", tmp_path / "train" / "a" / "more")  # inside a class too
    os.unlink(tmp_path / "train" / "d")
    with pytest.raises(DataError, match=r"train/a/more is a link to .*gone, which does not exist"):
        list_images(tmp_path / "train")
    os.unlink(tmp_path / "train" / "a" / "more")
    os.symlink(tmp_path / "gone", tmp_path / "train" / "a" / "notes.txt")  # never read: skipped as before
    assert list_images(tmp_path / "train")[0] == ["a", "b", "c"]
    os.symlink("d", tmp_path / "train" / "d")  # a link to itself: a loop, not "does not exist"
    with pytest.raises(DataError, match=r"train/d is a link to d, which cannot be followed \(Too many levels"):
        list_images(tmp_path / "train")


def test_a_class_lists_its_files_by_folder_then_name(tmp_path) -> None:
    # by the folder's /-joined path, then the name: "2019/jan" before "2019A" on every system (a backslash
    # sorts after "A", a slash before it), so a held-out split is the same files on Windows and Linux
    for rel in ("cat/b.png", "cat/2019A/0.png", "cat/2019/jan/1.png", "cat/2019/jan/0.png", "cat/a.png", "dog/0.png"):
        _png(tmp_path / "train" / rel)
    _, samples = list_images(tmp_path / "train")
    assert [os.path.relpath(p, tmp_path / "train") for p, _ in samples] == [
        "cat/a.png", "cat/b.png", "cat/2019/jan/0.png", "cat/2019/jan/1.png", "cat/2019A/0.png", "dog/0.png"]


def test_16_bit_grey_is_scaled_not_saturated_and_32_bit_is_refused(tmp_path) -> None:
    levels = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    Image.fromarray(levels).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    rgb = np.asarray(read_image(str(tmp_path / "grey16.png")))
    assert rgb.shape == (4, 4, 3) and np.array_equal(rgb[..., 0], np.round(levels / 257).astype(np.uint8))
    Image.fromarray(levels.astype(np.int32) * 1000, "I").save(tmp_path / "int32.tif")
    Image.fromarray(levels.astype(np.float32) / 7, "F").save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"int32.tif has 32-bit integer pixels \(PIL mode I\), whose range is unknown"):
        read_image(str(tmp_path / "int32.tif"))
    with pytest.raises(DataError, match=r"float.tif has floating-point pixels \(PIL mode F\)"):
        read_image(str(tmp_path / "float.tif"))
    # a 16-bit PGM (a listed extension), which PIL opens in mode I: scaled like the PNG, not refused
    (tmp_path / "grey16.pgm").write_bytes(b"P5 4 4 65535\n" + levels.astype(">u2").tobytes())
    assert Image.open(tmp_path / "grey16.pgm").mode == "I"
    assert np.array_equal(np.asarray(read_image(str(tmp_path / "grey16.pgm")))[..., 0], rgb[..., 0])


def test_the_held_out_split_records_which_files_it_split(tmp_path, fake_tv) -> None:
    _classes(tmp_path, 9)
    before = load_dataset("imagefolder", root=tmp_path, image_size=8).split
    assert before == load_dataset("imagefolder", root=tmp_path, image_size=8).split
    assert set(before) == {"dataset", "split_seed", "val_fraction", "files"} and len(before["files"]) == 16
    for cls in ("a", "b", "c"):  # one more image a class moved every held-out image under the same seed
        _png(tmp_path / "train" / cls / "9.png")
    added = load_dataset("imagefolder", root=tmp_path, image_size=8).split["files"]
    assert added != before["files"]
    os.rename(tmp_path / "train" / "c" / "9.png", tmp_path / "train" / "b" / "10.png")  # a file moved class
    assert load_dataset("imagefolder", root=tmp_path, image_size=8).split["files"] not in (added, before["files"])



def test_a_split_with_other_classes_names_what_differs(tmp_path, fake_tv) -> None:
    names = [f"class{i:03d}" for i in range(30)]
    for name in names:
        _png(tmp_path / "train" / name / "0.png")
    for name in names[:12] + names[13:] + ["zebra"]:
        _png(tmp_path / "val" / name / "0.png")
    with pytest.raises(DataError) as err:  # both lists in full: 26 000 characters for a thousand classes
        load_dataset("imagefolder", root=tmp_path, image_size=8)
    assert str(err.value) == (f"imagefolder {tmp_path / 'val'} lacks 'class012' and has 'zebra', which train has not "
                              "(30 classes, train 30); every split needs the same class folders")


def test_a_pil_warning_is_passed_on_once_not_for_every_image(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(imagefolder_mod, "_PIL_WARNINGS", set())
    for i in range(3):  # palette images with their transparency in bytes: PIL warns on convert
        image = Image.new("P", (4, 4))
        image.putpalette([0, 0, 0, 255, 0, 0] * 128)
        image.save(tmp_path / f"{i}.png", transparency=b"\x00\x80")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs
            for i in range(3):
                read_image(str(tmp_path / f"{i}.png"))
    assert len([w for w in caught if "Transparency" in str(w.message)]) == 1, [str(w.message) for w in caught]


def test_the_split_digest_reads_paths_the_same_on_windows(monkeypatch) -> None:
    import ntpath
    import posixpath

    # a checkpoint's held-out split moved between Linux and Windows must keep its digest: the relative
    # paths are joined by "/" whatever the system's separator
    windows = imagefolder_mod.posix_relative(r"D:\data\train\cat\sub\0.png", r"D:\data\train", ntpath)
    assert windows == "cat/sub/0.png"
    assert imagefolder_mod.posix_relative("/data/train/cat/sub/0.png", "/data/train", posixpath) == windows
    linux = imagefolder_mod.files_digest(
        SimpleNamespace(root="/data/train", classes=["cat"], samples=[("/data/train/cat/sub/0.png", 0)]))
    real = imagefolder_mod.posix_relative
    monkeypatch.setattr(imagefolder_mod, "posix_relative", lambda path, root: real(path, root, ntpath))
    assert imagefolder_mod.files_digest(SimpleNamespace(
        root=r"D:\data\train", classes=["cat"], samples=[(r"D:\data\train\cat\sub\0.png", 0)])) == linux


@pytest.mark.parametrize("bad", ["undecodable", "fifo"])
@pytest.mark.parametrize("where", ["val", "test", "held_out"])
def test_a_bad_val_or_test_file_is_refused_at_load(tmp_path, fake_tv, bad: str, where: str) -> None:
    _classes(tmp_path, 4)
    if where != "held_out":
        _classes(tmp_path, 2, split=where)
    folder = tmp_path / ("train" if where == "held_out" else where) / "b"
    names = [folder / f"{i}.png" for i in range(4 if where == "held_out" else 2)]
    for name in names:  # every file of the class is bad: some of them are held out
        name.unlink()
        os.mkfifo(name) if bad == "fifo" else name.write_bytes(b"not an image")
    why = r"is a named pipe \(FIFO\), not a regular file; remove it" if bad == "fifo" else \
        r"cannot be read \(cannot identify image file.*\); remove or replace it"
    with pytest.raises(DataError, match=rf"^imagefolder (file|image) {folder}/\d.png {why}"):
        load_dataset("imagefolder", root=tmp_path, image_size=8, val_fraction=0.5)


def test_a_decompression_bomb_is_one_line_and_a_large_image_one_logged_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # stands in for PIL's 89 million
    monkeypatch.setattr(imagefolder_mod, "_WARNED", set())
    _png(tmp_path / "bomb.png", size=15)  # 225 pixels: more than twice the limit
    _png(tmp_path / "large.png", size=12)  # 144: over the limit, a warning
    with pytest.raises(DataError, match=r"^imagefolder image .*bomb.png is refused as a decompression bomb "
                                        r"\(.*225 pixels.*\); shrink or remove it$"):
        read_image(str(tmp_path / "bomb.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning line
        with caplog.at_level(logging.WARNING, logger="prunetune.data.imagefolder"):
            read_image(str(tmp_path / "large.png"))
            read_image(str(tmp_path / "large.png"))
    assert [r.getMessage() for r in caplog.records if "large.png" in r.getMessage()] == [
        f"imagefolder image {tmp_path / 'large.png'} is very large "
        f"({caplog.records[0].args[1]})"]


def test_skipped_files_are_counted_hidden_folders_are_no_class_and_gif_is_read(tmp_path, caplog) -> None:
    _classes(tmp_path, 1)
    Image.new("P", (4, 4)).save(tmp_path / "train" / "a" / "anim.gif")
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    (tmp_path / "train" / "a" / "labels.csv").write_text("x")
    _png(tmp_path / "train" / "loose.png")
    _png(tmp_path / "train" / ".thumbs" / "0.png")
    _png(tmp_path / "train" / ".ipynb_checkpoints" / "0.png")
    (tmp_path / "train" / "b" / ".DS_Store").write_text("x")
    with caplog.at_level(logging.WARNING, logger="prunetune.data.imagefolder"):
        classes, samples = list_images(tmp_path / "train")
    assert classes == ["a", "b", "c"]
    assert [os.path.basename(p) for p, _ in samples] == ["0.png", "anim.gif", "0.png", "0.png"]
    assert read_image(samples[1][0]).mode == "RGB"
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (f"imagefolder {tmp_path / 'train'}: skipped 6 file(s) or folder(s) that are not read: "
                    "1 hidden file, 2 hidden folder, 1 loose in train/ (not in a class folder), 1 named .csv, "
                    "1 named .txt")


def test_a_class_folder_without_images_and_a_split_without_classes_are_one_line(tmp_path) -> None:
    _png(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) b hold no image; every class folder needs"):
        list_images(tmp_path / "train")
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match=r"val: no class folder found"):
        list_images(tmp_path / "val")
