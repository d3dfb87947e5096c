"""Building an index: what is stored, corrupt files, resuming an interrupted build, adding files later, videos,
semantic IDs, the compressed kinds through the model, and the errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from .helpers import draw
from xray_hf.eval.options import EmbedOptions
from xray_hf.search import SearchIndex, build_index
from xray_hf.search.embedder import SearchEmbedder


def test_build_stores_metadata_and_skips_the_corrupt_file(clip_dir, image_folder, tmp_path):
    report = build_index(clip_dir, str(image_folder), tmp_path / "index", progress=False)
    assert report["count"] == 16 and report["added"] == 16
    assert report["skipped"] == 1 and report["skipped_by_reason"] == {"corrupt_image": 1}
    assert report["skipped_items"] == [{"id": "broken.png", "source": str(image_folder), "reason": "corrupt_image"}]
    index = SearchIndex(tmp_path / "index")
    table = index.table
    assert table.num_rows == index.index.ntotal == 16
    assert {"id", "source", "modality", "file_path", "caption", "thumbnail", "tags", "colour", "vector_id"} \
        <= set(table.column_names)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["id"] == "red_square_0.png" and row["caption"] == "a red square" and row["tags"] == ["red", "square"]
    assert row["modality"] == "image" and row["file_path"] == str(image_folder / "red_square_0.png")
    assert row["thumbnail"][:8] == b"\x89PNG\r\n\x1a\n"
    assert table.column("vector_id").to_pylist() == list(range(16))
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert manifest["report"]["skipped_items"][0]["id"] == "broken.png"


def test_vectors_are_the_models_normalised_image_embeddings(clip_dir, image_folder, tmp_path):
    build_index(clip_dir, str(image_folder), tmp_path / "index", progress=False)
    index = SearchIndex(tmp_path / "index")
    embedder = SearchEmbedder(clip_dir)
    pixels = torch.stack([embedder.prepare_image(embedder.load_image(str(image_folder / name)))
                          for name in ("red_square_0.png", "blue_circle_3.png")])
    raw = embedder.model.get_image_features(pixels).pooler_output
    expected = torch.nn.functional.normalize(raw, dim=-1).detach().numpy()
    rows = [index.table.column("id").to_pylist().index(n) for n in ("red_square_0.png", "blue_circle_3.png")]
    np.testing.assert_allclose(index.index.index.reconstruct_batch(np.array(rows)), expected, atol=1e-5)


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_and_only_new_files_are_embedded(clip_dir, image_folder, tmp_path,
                                                                       monkeypatch):
    output = tmp_path / "index"
    calls = []
    original = SearchEmbedder.embed_pixels

    def counting(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 4 and fail:  # call 1 embeds the fingerprint probe, calls 2-3 two batches
            raise Interrupt("killed")
        return original(self, pixels)

    monkeypatch.setattr(SearchEmbedder, "embed_pixels", counting)
    fail = True
    with pytest.raises(Interrupt):
        build_index(clip_dir, str(image_folder), output, embed=EmbedOptions(batch_size=4), commit_every=4,
                    progress=False)
    committed = SearchIndex(output)
    assert len(committed) == 8  # two batches were committed before the third failed
    calls.clear()
    fail = False
    report = build_index(clip_dir, str(image_folder), output, embed=EmbedOptions(batch_size=4), commit_every=4,
                    progress=False)
    # the probe image of the fingerprint is one call of one item; the gallery: the 8 items not yet indexed
    assert sum(calls) - 1 == 8 and report["added"] == 8 and report["count"] == 16
    assert report["already_indexed"] == 8
    fresh = tmp_path / "fresh"
    build_index(clip_dir, str(image_folder), fresh, progress=False)
    resumed, whole = SearchIndex(output), SearchIndex(fresh)
    assert resumed.table.column("id").to_pylist() == whole.table.column("id").to_pylist()
    np.testing.assert_allclose(resumed.index.index.reconstruct_n(0, 16), whole.index.index.reconstruct_n(0, 16),
                               atol=1e-6)
    assert not [p for p in output.iterdir() if p.name.endswith(".tmp")]
    assert len([p for p in output.iterdir() if p.suffix == ".faiss"]) == 1  # old generations removed

    # files added to the source later: only they are decoded and embedded
    draw("red", "circle", shift=6).save(image_folder / "late.png")
    with open(image_folder / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": "late.png", "caption": "a late red circle", "tags": ["red"],
                                 "colour": "red"}) + "\n")
    calls.clear()
    report = build_index(clip_dir, str(image_folder), output, progress=False)
    assert report["added"] == 1 and report["count"] == 17 and sum(calls) - 1 == 1
    assert report["already_indexed"] == 17  # 16 indexed + the corrupt file, not retried


def test_resuming_with_other_settings_is_refused(clip_dir, other_clip_dir, image_folder, tmp_path):
    output = tmp_path / "index"
    build_index(clip_dir, str(image_folder), output, max_items=4, progress=False)
    with pytest.raises(ValueError, match="another kind"):
        build_index(clip_dir, str(image_folder), output, kind="hnsw", progress=False)
    with pytest.raises(ValueError, match="built with another checkpoint") as error:
        build_index(other_clip_dir, str(image_folder), output, progress=False)
    assert len(str(error.value)) < 400  # names the problem; does not dump the probe vectors
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not an index directory"):
        build_index(clip_dir, str(image_folder), tmp_path / "junk", progress=False)


def test_empty_and_undecodable_galleries_are_errors(clip_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="gallery source .* is empty: nothing to index"):
        build_index(clip_dir, str(empty), tmp_path / "i1", progress=False)
    import pyarrow as pa

    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "caption": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="gallery source .* is empty: nothing to index"):
        build_index(clip_dir, str(tmp_path / "empty.parquet"), tmp_path / "i0", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.png").write_bytes(b"nope")
    (broken / "metadata.jsonl").write_text('{"file_name": "a.png"}\n{"file_name": "b.png"}\n')
    with pytest.raises(ValueError, match=r"no item to index: all 2 items failed to decode .*empty_file"):
        build_index(clip_dir, str(broken), tmp_path / "i2", progress=False)
    with pytest.raises(ValueError, match="neither an embedded set"):
        build_index(clip_dir, str(tmp_path / "missing"), tmp_path / "i3", progress=False)


def test_videos_go_through_the_video_path(clip_dir, gallery_index, video_folder):
    index = SearchIndex(gallery_index)
    modality = index.table.column("modality").to_pylist()
    assert modality.count("video") == 3 and modality.count("image") == 16
    embedder = SearchEmbedder(clip_dir)
    clip = embedder.load_video(str(video_folder / "clip_red.mp4"))
    assert clip.shape[0] == 4  # the processor's frame count
    raw = embedder.model.get_video_features(embedder.prepare_video(clip)[None]).pooler_output
    row = index.table.column("id").to_pylist().index("clip_red.mp4")
    stored = index.index.index.reconstruct(row)
    np.testing.assert_allclose(stored, torch.nn.functional.normalize(raw, dim=-1)[0].detach().numpy(), atol=1e-5)


def test_semantic_ids_are_stored_when_a_quantiser_is_given(clip_dir, image_folder, tmp_path):
    from xray_hf.configuration.semantic_ids import XraySemanticIDConfig
    from xray_hf.modeling.semantic_ids import XraySemanticIDModel

    quantizer = XraySemanticIDModel(XraySemanticIDConfig(embedding_dim=16, num_levels=2, codebook_size=4))
    quantizer.fit(torch.randn(64, 16), epochs=2, seed=0)
    quantizer.save_pretrained(tmp_path / "quantizer")
    build_index(clip_dir, str(image_folder), tmp_path / "index", quantizer=tmp_path / "quantizer", progress=False)
    index = SearchIndex(tmp_path / "index")
    embedder = SearchEmbedder(clip_dir)
    pixels = embedder.prepare_image(embedder.load_image(str(image_folder / "red_square_0.png")))[None]
    expected = quantizer.encode(embedder.embed_pixels(pixels))[0].tolist()
    assert index.table.column("semantic_ids").to_pylist()[0] == expected
    assert all(len(ids) == 2 for ids in index.table.column("semantic_ids").to_pylist())


def test_a_quantiser_fitted_on_the_model_is_found_beside_it(clip_dir, other_clip_dir, tmp_path):
    from xray_hf.configuration.semantic_ids import XraySemanticIDConfig
    from xray_hf.modeling.semantic_ids import XraySemanticIDModel
    from xray_hf.search.build import find_quantizer

    run = tmp_path / "run"
    shutil.copytree(clip_dir, run / "clip")
    quantizer = XraySemanticIDModel(XraySemanticIDConfig(embedding_dim=16, num_levels=2, codebook_size=4))
    quantizer.save_pretrained(run / "semantic_ids" / "quantizer")
    report = run / "semantic_ids" / "report.json"
    report.write_text(json.dumps({"model": str(run / "clip"), "feature": "embedding"}))
    assert find_quantizer(str(run / "clip"), 16) == str(run / "semantic_ids" / "quantizer")
    assert find_quantizer(str(run / "clip"), 32) is None  # another width
    report.write_text(json.dumps({"model": str(other_clip_dir), "feature": "embedding"}))
    assert find_quantizer(str(run / "clip"), 16) is None  # fitted on another model


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_compressed_kinds_store_the_models_codes(clip_dir, image_folder, tmp_path, kind):
    build_index(clip_dir, str(image_folder), tmp_path / "index", kind=kind, progress=False)
    index = SearchIndex(tmp_path / "index")
    embedder = SearchEmbedder(clip_dir)
    pixels = embedder.prepare_image(embedder.load_image(str(image_folder / "red_square_0.png")))[None]
    codes = embedder.model.get_image_features(pixels, compression=kind).pooler_output.numpy()
    stored = index.index.index.reconstruct_n(0, 1) if kind == "binary" else index.index.index.sa_encode(
        index.index.index.reconstruct_n(0, 1))
    if kind == "int8":
        np.testing.assert_array_equal(stored.astype(np.int16) - 128, codes.astype(np.int16))
    else:
        np.testing.assert_array_equal(stored, codes)


def test_int8_keeps_float_vectors_for_re_ranking_unless_told_not_to(clip_dir, image_folder, tmp_path):
    """`xray-hf index --kind int8` stores the float vectors beside the codes (re-ranking, default x4), the same as a
    flat index holds; `--int8-rescore-multiplier 0` stores the codes alone; the settings are in the manifest."""
    from xray_hf.cli import main

    build_index(clip_dir, str(image_folder), tmp_path / "flat", progress=False)
    assert main(["index", "--model", str(clip_dir), "--source", str(image_folder), "--output",
                 str(tmp_path / "int8"), "--kind", "int8", "--no-thumbnails"]) == 0
    assert main(["index", "--model", str(clip_dir), "--source", str(image_folder), "--output",
                 str(tmp_path / "codes"), "--kind", "int8", "--int8-rescore-multiplier", "0",
                 "--no-thumbnails"]) == 0
    flat, int8, codes = (SearchIndex(tmp_path / name) for name in ("flat", "int8", "codes"))
    assert len(int8.manifest["index_files"]) == 2 and int8.manifest["params"]["int8_rescore_multiplier"] == 4
    assert len(codes.manifest["index_files"]) == 1 and codes.manifest["params"]["int8_rescore_multiplier"] == 0
    assert codes.index.vectors is None
    np.testing.assert_allclose(int8.index.vectors.reconstruct_n(0, len(int8)),
                               flat.index.index.reconstruct_n(0, len(flat)), atol=1e-6)
    queries = flat.index.index.reconstruct_n(0, 3)
    scores, ids = int8.index.search(queries, 5)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ flat.index.index.reconstruct_n(0, len(flat)).T,
                                                          ids, 1), atol=1e-5)  # float scores after re-ranking


def test_projection_compression_and_its_errors(clip_dir, image_folder, tmp_path):
    report = build_index(clip_dir, str(image_folder), tmp_path / "index", compression="projection",
                         progress=False)
    assert report["dim"] == 8
    vectors = SearchIndex(tmp_path / "index").index.index.reconstruct_n(0, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="float kinds"):
        build_index(clip_dir, str(image_folder), tmp_path / "i2", kind="int8", compression="projection")
    bare = tmp_path / "bare"
    shutil.copytree(clip_dir, bare)
    config = json.loads((bare / "config.json").read_text())
    config["compression_config"] = None
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="compress stage"):
        build_index(bare, str(image_folder), tmp_path / "i3", kind="int8", progress=False)


def test_parts_are_plain_parquet(clip_dir, image_folder, tmp_path):
    build_index(clip_dir, str(image_folder), tmp_path / "index", progress=False)
    parts = sorted((tmp_path / "index").glob("items-*.parquet"))
    assert parts and pq.read_table(parts[0]).num_rows == 16


def test_an_index_built_with_a_relative_model_path_is_searchable_from_elsewhere(clip_dir, image_folder, tmp_path,
                                                                                  monkeypatch):
    from xray_hf.search import Searcher

    monkeypatch.chdir(clip_dir.parent)
    build_index(clip_dir.name, str(image_folder), tmp_path / "index", max_items=4, progress=False)
    monkeypatch.chdir(tmp_path)
    assert len(Searcher(tmp_path / "index").search("a red square", k=2).rows) == 2


def test_cli_index_compile_compiles_the_vision_tower_and_prints_items_per_second(clip_dir, image_folder, tmp_path,
                                                                                  capsys, monkeypatch):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from xray_hf.cli import main
    from xray_hf.export.compile import compile_for_inference

    counter = CompileCounter()  # counts graphs instead of generating code (inductor: tests/export)
    monkeypatch.setitem(compile_for_inference.__kwdefaults__, "backend", counter)
    torch._dynamo.reset()
    try:
        assert main(["index", "--model", str(clip_dir), "--source", str(image_folder), "--output",
                     str(tmp_path / "index"), "--batch-size", "8", "--compile"]) == 0
    finally:
        torch._dynamo.reset()
    assert counter.frame_count >= 1
    assert "items/s)" in capsys.readouterr().out


@pytest.mark.slow  # an ONNX export
def test_an_export_folder_indexes_and_searches_as_its_checkpoint(clip_dir, image_folder, tmp_path, capsys):
    """`xray-hf index --model ONNX_DIR`: the int8 image encoder in onnxruntime fills the index; its vectors are the
    checkpoint's to int8 noise, queries agree with the float index, and the compressed kinds say what is missing."""
    from xray_hf.cli import main
    from xray_hf.export.onnx import export_onnx
    from xray_hf.export.runtime import XrayOnnxModel
    from xray_hf.search import Searcher

    export_onnx(clip_dir, tmp_path / "onnx", int8=True)
    assert main(["index", "--model", str(tmp_path / "onnx"), "--source", str(image_folder), "--output",
                 str(tmp_path / "onnx_index")]) == 0
    assert "items/s" in capsys.readouterr().out
    build_index(clip_dir, str(image_folder), tmp_path / "float_index", progress=False)
    ours, floats = SearchIndex(tmp_path / "onnx_index"), SearchIndex(tmp_path / "float_index")
    assert ours.table.column("id").to_pylist() == floats.table.column("id").to_pylist()
    cosine = (ours.index.index.reconstruct_n(0, 16) * floats.index.index.reconstruct_n(0, 16)).sum(-1)
    assert cosine.min() > 0.99 and cosine.max() < 1 - 1e-7  # int8 products: near, not equal

    searcher = Searcher(tmp_path / "onnx_index")
    assert isinstance(searcher.embedder.model, XrayOnnxModel) and searcher.embedder.model.int8_encoders == {
        "image", "video"}
    rows = searcher.search(image=str(image_folder / "blue_circle_3.png"), k=1).rows
    assert rows[0]["id"] == "blue_circle_3.png" and rows[0]["score"] == pytest.approx(1, abs=1e-4)
    text = searcher.search("a red square", k=3).rows
    assert [row["id"] for row in text][:1] == [row["id"] for row in Searcher(tmp_path / "float_index").search(
        "a red square", k=3).rows][:1]
    with pytest.raises(ValueError, match="ONNX export folder, which holds the encoders only"):
        build_index(str(tmp_path / "onnx"), str(image_folder), tmp_path / "int8_kind", kind="int8", progress=False)
