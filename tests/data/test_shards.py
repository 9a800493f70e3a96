"""WebDataset shards: readable by index, identical pixels, the same training and embeddings."""

import tarfile

import numpy as np
import pytest
import torch

from ensemble.data.decode import decode_image
from ensemble.data.manifest import read_manifest
from ensemble.data.shards import write_shards
from ensemble.errors import EnsError


def test_shards_hold_every_image_byte_for_byte(coil_data, tmp_path):
    train = read_manifest(coil_data.parent / "train.csv")
    shards = write_shards(train, tmp_path / "shards", shard_size=7)
    tars = sorted((tmp_path / "shards").glob("shard-*.tar"))
    assert len(tars) == 4 and len(shards) == len(train) == 24  # 7 + 7 + 7 + 3
    assert shards.labels == train.labels and shards.domains == train.domains
    for original, packed in zip(train.paths, shards.paths, strict=True):
        assert np.array_equal(decode_image(original), decode_image(packed))
    with tarfile.open(tars[0]) as archive:  # a standard WebDataset tar: key.ext members
        names = archive.getnames()
    assert sorted(names[:4]) == ["000000000.cls.txt", "000000000.domain.txt", "000000000.path.txt", "000000000.png"]
    with pytest.raises(EnsError, match="a shard set is already there"):
        write_shards(train, tmp_path / "shards")
    assert not list((tmp_path / "shards").glob(".writing-*"))  # the staging folder is gone


def test_training_and_extraction_read_shards_like_files(coil_data, tmp_path):
    from click.testing import CliRunner

    from ensemble.cli import main
    from ensemble.config.load import load_member_cfg
    from ensemble.embed.extract import TTA, extract_many
    from ensemble.train.member import train_member
    from ensemble.workspace import Workspace
    from ensemble.workspace.resolve import load_members
    from tests.conftest import tiny_recipe

    folder = coil_data.parent
    for split in ("train", "query", "index"):
        result = CliRunner().invoke(main, ["data", "shards", str(folder / f"{split}.csv"), "--out",
                                           str(tmp_path / split), "--shard-size", "10"])
        assert result.exit_code == 0, result.output
    data = tmp_path / "shards.yaml"
    data.write_text("train: train/manifest.csv\nquery: query/manifest.csv\nindex: index/manifest.csv\n")
    one = ["stages=[{train: [all], epochs: 1}]"]
    files = train_member(load_member_cfg(tiny_recipe(tmp_path, coil_data, name="f"), one), tmp_path / "runs")
    packed = train_member(load_member_cfg(tiny_recipe(tmp_path, data, name="s"), one), tmp_path / "runs")
    assert packed["trained"]["neck"]["mP@5"] == files["trained"]["neck"]["mP@5"]  # same images, same seed
    ws = Workspace(tmp_path / "runs")
    emb = load_members(ws, ["s"], "neck", torch.device("cpu"))[0].embedder
    a = extract_many([emb], read_manifest(folder / "index.csv").paths, torch.device("cpu"), TTA(), workers=0)[0]
    b = extract_many([emb], read_manifest(tmp_path / "index" / "manifest.csv").paths, torch.device("cpu"), TTA(),
                     workers=0)[0]
    assert np.array_equal(a, b)


def test_a_full_disk_names_the_shard_being_written(coil_data, tmp_path, monkeypatch):
    """The tar writer's OSError names no file (the CLI said 'a file: No space left on device'); it names the
    shard, and nothing is left behind."""
    import errno

    import webdataset as wds

    real, written = wds.ShardWriter.write, []

    def full_disk_at_the_9th(self, sample):
        written.append(sample)
        if len(written) == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample)

    monkeypatch.setattr(wds.ShardWriter, "write", full_disk_at_the_9th)
    with pytest.raises(OSError) as caught:
        write_shards(read_manifest(coil_data.parent / "train.csv"), tmp_path / "shards", shard_size=7)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "shards/shard-000001.tar")
    assert list((tmp_path / "shards").iterdir()) == []
