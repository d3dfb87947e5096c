"""Queries by text, image and video; top-k, minimum score and filters; the API and the CLI agree; and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xray_hf.cli import main
from xray_hf.search import Searcher, SearchIndex, parse_filters, search


@pytest.fixture(scope="module")
def searcher(gallery_index):
    return Searcher(gallery_index)


def test_text_query_ranks_every_item_by_cosine(searcher):
    result = searcher.search("a red square", k=50)
    rows = result.rows
    assert len(rows) == 19 and [row["rank"] for row in rows] == list(range(1, 20))
    query = searcher.embedder.index_vectors(searcher.embedder.embed_texts(["a red square"]))[0]
    vectors = searcher.index.index.index.reconstruct_n(0, 19)
    cosine = vectors @ query
    ids = searcher.index.table.column("id").to_pylist()
    assert [row["id"] for row in rows] == [ids[i] for i in np.argsort(-cosine, kind="stable")]
    np.testing.assert_allclose([row["score"] for row in rows], np.sort(cosine)[::-1], atol=1e-5)
    assert "thumbnail" not in rows[0] and "vector_id" not in rows[0]
    assert result.seconds > 0 and result.query == {"text": "a red square"}
    assert len(searcher.search("a red square", k=3).rows) == 3


def test_image_and_video_queries_find_themselves(searcher, gallery_index):
    images = gallery_index.parent / "images"
    rows = searcher.search(image=str(images / "blue_circle_3.png"), k=3).rows
    assert rows[0]["id"] == "blue_circle_3.png" and rows[0]["score"] == pytest.approx(1, abs=1e-4)
    from PIL import Image

    assert searcher.search(image=Image.open(images / "blue_circle_3.png"), k=1).rows[0]["id"] == "blue_circle_3.png"
    videos = gallery_index.parent / "videos"
    rows = searcher.search(video=str(videos / "clip_green.mp4"), k=2).rows
    assert rows[0]["id"] == "clip_green.mp4" and rows[0]["modality"] == "video"
    assert rows[0]["score"] == pytest.approx(1, abs=1e-4)


def test_min_score_and_filters(searcher):
    everything = searcher.search("a green circle", k=19).rows
    threshold = everything[5]["score"]
    kept = searcher.search("a green circle", k=19, min_score=threshold).rows
    assert kept == everything[:6]
    assert searcher.search("a green circle", min_score=1.5).rows == []
    videos = searcher.search("a green circle", k=10, filters={"modality": "video"}).rows
    assert len(videos) == 3 and all(row["modality"] == "video" for row in videos)
    assert [r["id"] for r in videos] == [r["id"] for r in everything if r["modality"] == "video"]
    red = searcher.search("a green circle", k=10, filters={"tags": "red"}).rows  # a list column: contains
    assert {row["id"] for row in red} == {"red_square_0.png", "red_square_3.png", "red_circle_0.png",
                                          "red_circle_3.png", "clip_red.mp4"}
    both = searcher.search("x", k=19, filters=parse_filters(["colour=red", "colour=blue", "modality=image"])).rows
    assert len(both) == 8 and {row["colour"] for row in both} == {"red", "blue"}
    assert searcher.search("x", filters={"colour": "purple"}).rows == []
    with pytest.raises(ValueError, match="no metadata column 'shape'"):
        searcher.search("x", filters={"shape": "square"})
    with pytest.raises(ValueError, match="COLUMN=VALUE"):
        parse_filters(["colour"])


def test_one_query_at_a_time(searcher, gallery_index):
    with pytest.raises(ValueError, match="give one query"):
        searcher.search()
    with pytest.raises(ValueError, match="give one query"):
        searcher.search("a red square", image=str(gallery_index.parent / "images" / "red_square_0.png"))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        searcher.search("x", k=0)


def test_bad_index_path_and_mismatched_models_are_refused(gallery_index, other_clip_dir, wide_clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no search index at .*does not exist"):
        Searcher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no search index at .*index.json"):
        SearchIndex(tmp_path / "empty")
    with pytest.raises(ValueError, match="built with another checkpoint"):
        Searcher(gallery_index, model=other_clip_dir)
    with pytest.raises(ValueError, match="holds 16-d embeddings, but .* gives 32-d"):
        Searcher(gallery_index, model=wide_clip_dir)


def test_the_api_and_the_cli_give_the_same_rows(gallery_index, capsys):
    rows = search(gallery_index, "a yellow circle", k=5, filters={"modality": "image"})
    assert main(["search", str(gallery_index), "a yellow circle", "-k", "5", "--filter", "modality=image",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == rows and printed["query"] == {"text": "a yellow circle"}
    assert main(["search", str(gallery_index), "a yellow circle", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert rows[0]["id"] in table and "2 results in" in table
    image = gallery_index.parent / "images" / "yellow_square_0.png"
    assert main(["search", str(gallery_index), "--image", str(image), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["id"] == "yellow_square_0.png"


def test_cli_index_and_its_errors(clip_dir, image_folder, tmp_path, capsys):
    assert main(["index", "--model", str(clip_dir), "--source", str(image_folder), "--output",
                 str(tmp_path / "index"), "--kind", "hnsw"]) == 0
    out = capsys.readouterr().out
    assert "indexed 16 items" in out and "skipped 1 (corrupt_image 1): broken.png" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(tmp_path / "missing"), "a red square"])
    assert exit_info.value.code == 2
    assert "xray-hf search: error: no search index at" in capsys.readouterr().err
