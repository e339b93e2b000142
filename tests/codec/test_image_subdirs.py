"""`subdirs`: train on some folders of a data set (BSDS500 train/ + val/) and keep the rest
(test/) unseen, through the same option the CLI passes (--source-option subdirs=train,val)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from latentwire.codec.errors import InputError
from latentwire.codec.sources import ImageFolder, list_images, load_source, sample_data_root


def _split_folder(tmp_path: Path) -> Path:
    src = list_images(sample_data_root() / "bsds")
    for sub, files in (("train", src[:1]), ("val", src[1:2]), ("test", src[2:])):
        (tmp_path / sub).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / sub / f.name)
    return tmp_path


def test_subdirs_select_folders_and_keep_paths_relative(tmp_path: Path) -> None:
    root = _split_folder(tmp_path)
    assert len(ImageFolder(root)) == 3
    chosen = ImageFolder(root, subdirs=["train", "val"])
    assert [p.relative_to(root).parts[0] for p in chosen.paths] == ["train", "val"]
    crops = load_source(root, subdirs=["val", "train"], size=[16, 16], per_image=2)
    assert crops.samples.shape == (4, 3, 16, 16)
    assert all(not f.startswith("test/") for f in crops.meta["files"])
    assert crops.meta["subdirs"] == ["val", "train"]
    assert len(ImageFolder(root, subdirs="test")) == 1  # a single name, as the CLI passes it


def test_missing_subdir_is_named(tmp_path: Path) -> None:
    root = _split_folder(tmp_path)
    with pytest.raises(InputError, match=r"sub-folders \['tset'\] not found"):
        ImageFolder(root, subdirs=["train", "tset"])
