import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import ensemble.data.dataset as dataset_module
import ensemble.embed.cache as cache_module
import ensemble.embed.extract as extract_module
from ensemble.data.manifest import read_manifest
from ensemble.distributed import World
from ensemble.embed.cache import embed_manifest
from ensemble.embed.embedder import model_embedder
from ensemble.embed.extract import TTA, Embedder, extract_many
from ensemble.errors import EnsError
from ensemble.workspace.layout import Workspace
from ensemble.workspace.resolve import load_members


def load_member_embedder(workdir, name, features, device):
    return load_members(Workspace(workdir), [name], features, device)[0].embedder


def counting_decoder(monkeypatch):
    calls = []
    real = dataset_module.decode_image

    def counted(path, draft_px=None):
        calls.append(path)
        return real(path, draft_px)

    monkeypatch.setattr(dataset_module, "decode_image", counted)
    return calls


def test_each_image_is_decoded_once_for_all_members_and_views(trained_workspace, monkeypatch):
    calls = counting_decoder(monkeypatch)
    cpu = torch.device("cpu")
    embedders = [load_member_embedder(trained_workspace, m, "neck", cpu) for m in ("vit_a", "vit_b", "tvit")]
    manifest = read_manifest(trained_workspace.parent / "index.csv")
    feats = extract_many(embedders, manifest.paths, cpu, TTA(flip=True), batch_size=8, workers=0)
    assert len(calls) == len(manifest) == 20  # not 20 x 3 members x 2 flips
    assert [f.shape for f in feats] == [(20, 8), (20, 8), (20, 8)]
    assert np.allclose(np.linalg.norm(feats[0], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])  # different members, different features


def test_flip_tta_averages_both_views(trained_workspace):
    cpu = torch.device("cpu")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    paths = read_manifest(trained_workspace.parent / "query.csv").paths
    plain = extract_many([emb], paths, cpu, TTA(flip=False), workers=0)[0]
    mirrored = dataclasses.replace(emb, fn=lambda x: emb.fn(x.flip(-1)))  # sees every image mirrored
    flipped_only = extract_many([mirrored], paths, cpu, TTA(flip=False), workers=0)[0]
    both = extract_many([emb], paths, cpu, TTA(flip=True), workers=0)[0]
    expected = (plain + flipped_only) / np.linalg.norm(plain + flipped_only, axis=1, keepdims=True)
    assert not np.allclose(plain, flipped_only, atol=1e-3)  # the flip changes the features
    assert np.allclose(both, expected, atol=1e-5)


def test_second_embedding_is_a_cache_hit_and_new_checkpoint_misses(trained_workspace, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    manifest = read_manifest(trained_workspace.parent / "query.csv")
    runs = []
    real = cache_module.extract_many

    def counted(embedders, *args, **kwargs):
        runs.append([e.name for e in embedders])
        return real(embedders, *args, **kwargs)

    monkeypatch.setattr(cache_module, "extract_many", counted)
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    first = embed_manifest([emb], manifest, tmp_path, cpu, workers=0)[0]
    second = embed_manifest([emb], manifest, tmp_path, cpu, workers=0)[0]
    assert runs == [["vit_a"]] and np.array_equal(first, second)
    embed_manifest([emb], manifest, tmp_path, cpu, TTA(flip=False), workers=0)
    assert len(runs) == 2  # other TTA, other entry
    emb.key = "a-retrained-checkpoint:neck"
    embed_manifest([emb], manifest, tmp_path, cpu, workers=0)
    assert len(runs) == 3  # an entry of an old checkpoint is never used
    emb.mean = (0.1, 0.2, 0.3)
    embed_manifest([emb], manifest, tmp_path, cpu, workers=0)
    assert len(runs) == 4  # nor one made with other preprocessing


def test_a_damaged_cache_file_is_recomputed_not_used(trained_workspace, tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    manifest = read_manifest(trained_workspace.parent / "query.csv")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    first = embed_manifest([emb], manifest, tmp_path, cpu, workers=0)[0]
    npy = cache_module.cache_path(tmp_path, emb, manifest, TTA())
    raw = bytearray(npy.read_bytes())
    raw[-len(first) * 4:] = bytes(len(first) * 4)  # zero the last rows' bytes, keep the header and size
    npy.write_bytes(bytes(raw))
    runs = []
    real = cache_module.extract_many
    monkeypatch.setattr(cache_module, "extract_many", lambda *a, **k: runs.append(1) or real(*a, **k))
    again = embed_manifest([emb], manifest, tmp_path, cpu, workers=0)[0]
    assert runs == [1] and np.array_equal(first, again)


def test_images_cached_under_another_manifest_are_not_extracted_again(trained_workspace, tmp_path, monkeypatch):
    from tests.conftest import write_manifest

    cpu = torch.device("cpu")
    query, index = (read_manifest(trained_workspace.parent / f"{s}.csv") for s in ("query", "index"))
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    cached_index = embed_manifest([emb], index, tmp_path, cpu, workers=0)[0]
    detour = [f"{Path(p).parent}/../{Path(p).parent.name}/{Path(p).name}" for p in index.paths[::-1]]
    rows = [{"path": p, "label": "", "domain": ""} for p in (*query.paths[:2], *detour)]  # same files, other spelling
    union = read_manifest(write_manifest(tmp_path / "union.csv", rows), require_label=False)
    calls = counting_decoder(monkeypatch)
    feats = embed_manifest([emb], union, tmp_path, cpu, workers=0)[0]
    assert sorted(calls) == sorted(query.paths[:2])  # only the 2 images no cache entry holds
    assert np.array_equal(feats[2:], cached_index[::-1])
    fresh = extract_many([emb], union.paths, cpu, TTA(flip=True), workers=0)[0]
    assert np.allclose(feats, fresh, atol=2e-3)  # float16 cache vs float32


def test_the_same_csv_text_in_another_folder_names_other_images_and_misses_the_cache(trained_workspace, tmp_path):
    import shutil

    from tests.conftest import write_manifest

    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    rows = [{"path": f"img/{i}.png", "label": "", "domain": ""} for i in range(4)]
    manifests = []
    for folder, sources in (("a", index.paths[:4]), ("b", index.paths[-4:])):  # other images, same file names
        (tmp_path / folder / "img").mkdir(parents=True)
        for i, source in enumerate(sources):
            shutil.copy(source, tmp_path / folder / "img" / f"{i}.png")
        manifests.append(read_manifest(write_manifest(tmp_path / folder / "m.csv", rows), require_label=False))
    assert manifests[0].sha1 == manifests[1].sha1  # byte-identical CSVs
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    first, second = (embed_manifest([emb], m, tmp_path / "cache", cpu, workers=0)[0] for m in manifests)
    fresh = extract_many([emb], manifests[1].paths, cpu, TTA(flip=True), workers=0)[0]
    assert not np.allclose(first, second, atol=1e-2)
    assert np.allclose(second, fresh, atol=2e-3)  # b's own images, not a's features


def test_an_image_that_failed_under_another_manifest_is_tried_again(trained_workspace, tmp_path, monkeypatch):
    from tests.conftest import write_manifest

    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows = [{"path": p, "label": "", "domain": ""} for p in (*index.paths, str(broken))]
    first = read_manifest(write_manifest(tmp_path / "first.csv", rows), require_label=False)
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    assert not embed_manifest([emb], first, tmp_path, cpu, workers=0, max_fail_ratio=1.0)[0][-1].any()
    second = read_manifest(write_manifest(tmp_path / "second.csv", rows[::-1]), require_label=False)
    calls = counting_decoder(monkeypatch)
    embed_manifest([emb], second, tmp_path, cpu, workers=0, max_fail_ratio=1.0)
    assert calls == [str(broken)]  # decoded again (and warned about again), not served as a zero row


def test_the_unreadable_ratio_counts_the_rows_found_in_the_cache(trained_workspace, tmp_path):
    """One broken image beside N cached ones is judged against the job's N + 1 images, not the 1 decoded."""
    from tests.conftest import write_manifest

    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    embed_manifest([emb], index, tmp_path, cpu, workers=0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows = [{"path": p, "label": "", "domain": ""} for p in (*index.paths, str(broken))]
    union = read_manifest(write_manifest(tmp_path / "union.csv", rows), require_label=False)
    n = len(union)
    with pytest.raises(EnsError, match=rf"^1 of the job's {n} images unreadable already \(over max_fail_ratio 1.0%\)"):
        embed_manifest([emb], union, tmp_path, cpu, workers=0)
    feats = embed_manifest([emb], union, tmp_path, cpu, workers=0, max_fail_ratio=1.5 / n)[0]
    assert feats[:-1].any(axis=1).all() and not feats[-1].any()


def test_unknown_member_is_one_line_error(trained_workspace):
    from ensemble.errors import EnsError

    with pytest.raises(EnsError, match="member 'nobody': no trained model at"):
        load_member_embedder(trained_workspace, "nobody", "neck", torch.device("cpu"))


def size_aware_embedder():
    """A stand-in model whose features depend on the pixels and on the size it is given."""
    def fn(x):
        return torch.stack([x.mean((1, 2, 3)), x[:, 0].mean((1, 2)), x[:, :, : x.shape[2] // 2].mean((1, 2, 3)),
                            torch.full((len(x),), x.shape[-1] / 32.0)], 1)
    return Embedder("fake", "fake", "fake", 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 4, fn)


def test_a_models_own_extra_sizes_average_its_features_over_every_size(trained_workspace):
    """eval.extra_sizes (Embedder.extra_sizes): the L2-normalised features at each size, summed, normalised;
    the run's TTA sizes add to them without embedding a size twice."""
    cpu, paths = torch.device("cpu"), read_manifest(trained_workspace.parent / "query.csv").paths
    base = size_aware_embedder()
    multi = dataclasses.replace(base, extra_sizes=(48,))
    at_32, at_48, both = (extract_many([e], paths, cpu, TTA(flip=False), workers=0, jpeg_draft=False)[0]
                          for e in (base, dataclasses.replace(base, size_px=48), multi))
    expected = (at_32 + at_48) / np.linalg.norm(at_32 + at_48, axis=1, keepdims=True)
    assert not np.allclose(at_32, at_48, atol=1e-3)
    assert np.allclose(both, expected, atol=1e-5)
    assert [v[0] for v in multi.views([48, 64])] == [32, 48, 64]
    again = extract_many([multi], paths, cpu, TTA(flip=False, extra_sizes=(48,)), workers=0, jpeg_draft=False)[0]
    assert np.allclose(again, both, atol=1e-6)  # 48 px once, not twice


def test_a_fixed_size_vit_refuses_tta_sizes_and_keeps_its_cache_key(trained_workspace):
    """The recipe's own extra sizes are refused before training (tests/train/test_member.py); a run's TTA
    sizes (an ensemble's tta.extra_sizes) are refused where they meet the ViT."""
    cpu = torch.device("cpu")
    file = load_members(Workspace(trained_workspace), ["vit_a"], "neck", cpu)[0].file
    emb = model_embedder(file.model, "vit_a", "k", file.arch, "neck", cpu)
    assert emb.key == "k:neck" and emb.extra_sizes == ()  # no extra sizes: the cache key as before
    with pytest.raises(EnsError, match=r"vit_a: TTA sizes \[48\], but this ViT takes only its training size 32 px"):
        extract_many([emb], [], cpu, TTA(flip=True, extra_sizes=(32, 48)), workers=0)  # an ensemble's tta


def kill_at_decode(monkeypatch, nth: int) -> None:
    """The nth image decoded from now on raises KeyboardInterrupt (a killed run)."""
    seen, real = [], dataset_module.decode_image

    def decode(path, draft_px=None):
        seen.append(path)
        if len(seen) == nth:
            raise KeyboardInterrupt
        return real(path, draft_px)
    monkeypatch.setattr(dataset_module, "decode_image", decode)


def partial_entries(folder: Path) -> list[list[str]]:
    """The image paths of each partial cache entry below `folder`, checking each array's row count."""
    entries = []
    for npy in sorted(folder.rglob("*.partial-*.npy"), key=lambda p: p.stat().st_mtime_ns):
        paths = npy.with_suffix(".paths").read_text().split("\n")
        assert np.load(npy).shape[0] == len(paths)
        entries.append(paths)
    return entries


def test_a_killed_extraction_resumes_from_its_last_partial_save(trained_workspace, tmp_path, monkeypatch):
    """Rows extracted before a kill are saved as a partial entry, and a killed rerun saves its own beside it;
    the next rerun decodes only the others, ends with the features of an uninterrupted run and removes them."""
    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    uninterrupted = embed_manifest([emb], index, tmp_path / "a", cpu, workers=0, batch_size=4)[0]
    monkeypatch.setattr(cache_module, "PARTIAL_EVERY_S", 0.0)  # save after every batch
    real = dataset_module.decode_image
    for nth in (11, 5):  # killed in the 3rd batch, then in the 2nd batch of the rerun
        kill_at_decode(monkeypatch, nth)
        with pytest.raises(KeyboardInterrupt):
            embed_manifest([emb], index, tmp_path / "b", cpu, workers=0, batch_size=4)
    assert partial_entries(tmp_path / "b") == [list(index.paths[:8]), list(index.paths[8:12])]
    monkeypatch.setattr(dataset_module, "decode_image", real)
    decoded = counting_decoder(monkeypatch)
    resumed = embed_manifest([emb], index, tmp_path / "b", cpu, workers=0, batch_size=4)[0]
    assert sorted(decoded) == sorted(index.paths[12:])
    assert np.allclose(resumed, uninterrupted, atol=1e-3)
    assert not list((tmp_path / "b").rglob("*.partial*"))


def test_each_rank_of_a_killed_multi_process_run_saves_its_own_shard(trained_workspace, tmp_path, monkeypatch):
    """Rank r of 2 saves the rows it extracted (its shard of the rows not cached) before the gather, as its
    own entry; a rerun in any number of processes (here one) decodes only the rows no rank saved."""
    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    uninterrupted = embed_manifest([emb], index, tmp_path / "a", cpu, workers=0, batch_size=4)[0]
    monkeypatch.setattr(cache_module, "PARTIAL_EVERY_S", 0.0)
    real = dataset_module.decode_image
    for rank in (0, 1):  # each rank killed in its 2nd batch
        monkeypatch.setattr(extract_module, "world", lambda r=rank: World(rank=r, size=2))
        kill_at_decode(monkeypatch, 5)
        with pytest.raises(KeyboardInterrupt):
            embed_manifest([emb], index, tmp_path / "b", cpu, workers=0, batch_size=4)
    # rank 1's run reused rank 0's rows: its shard is every 2nd row of the rest (1, 3, 5, 7, 8, 9, ...)
    saved = [[0, 2, 4, 6], [3, 7, 9, 11]]
    assert partial_entries(tmp_path / "b") == [[index.paths[i] for i in rows] for rows in saved]
    monkeypatch.setattr(extract_module, "world", World)
    monkeypatch.setattr(dataset_module, "decode_image", real)
    decoded = counting_decoder(monkeypatch)
    resumed = embed_manifest([emb], index, tmp_path / "b", cpu, workers=0, batch_size=4)[0]
    assert sorted(decoded) == sorted(set(index.paths) - {index.paths[i] for rows in saved for i in rows})
    assert np.allclose(resumed, uninterrupted, atol=1e-3)
    assert not list((tmp_path / "b").rglob("*.partial*"))


def test_a_read_only_cache_is_refused_before_any_image_is_decoded(trained_workspace, tmp_path, monkeypatch):
    """The features could not be stored: say so before extracting (hours at GUIE scale), not after."""
    import errno
    import tempfile

    cpu = torch.device("cpu")
    index = read_manifest(trained_workspace.parent / "index.csv")
    emb = load_member_embedder(trained_workspace, "vit_a", "neck", cpu)
    decoded = counting_decoder(monkeypatch)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as caught:
        embed_manifest([emb], index, tmp_path / "cache", cpu, workers=0)
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(tmp_path / "cache" / emb.name)
    assert decoded == []
    feats = embed_manifest([emb], index, tmp_path / "cache", cpu, workers=0, use_cache=False)[0]
    assert feats.shape == (len(index), emb.out_dim)  # nothing to store: no check
