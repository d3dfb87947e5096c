"""`xray-hf curate`: the configured steps over OpenMoji, shards and a consistent report, an interrupted run resumed
to the same shards, a changed config refused."""

import json

import datasets
import pytest
import yaml

from xray_hf.cli import main
from xray_hf.curation.run import CurateConfig, curate

STEPS = [{"clean": {}}, {"language": {"languages": ["en"], "min_probability": 0.0}}, {"sentences": {}},
         {"balance": {"t": 5}}, {"hashtags": {"column": "hashtags"}}]


def write_config(path, out, **changes):
    config = {"source": {"name": "openmoji", "split": "train", "max_samples": 300}, "output_dir": str(out),
              "shard_size": 20, "steps": STEPS, **changes}
    path.write_text(yaml.safe_dump(config))
    return path


def shards(out):
    files = sorted(str(p) for p in out.glob("shard-*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train")


def test_curate_writes_shards_and_a_consistent_report(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "out")
    assert main(["curate", "--config", str(config)]) == 0
    assert "curated" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    steps = report["steps"]
    assert steps[0]["rows_out"] == 300
    for before, step in zip(steps, steps[1:]):
        assert step["rows_in"] == before["rows_out"] and step["rows_out"] <= step["rows_in"] or step["step"] == "sentences"
    assert report["rows_written"] == steps[-1]["rows_out"] == len(shards(tmp_path / "out")) < 300  # balancing dropped some
    assert report["shards"] == -(-report["rows_written"] // 20)
    table = json.loads((tmp_path / "out" / "hashtag_table.json").read_text())
    assert steps[-1]["canonical_hashtags"] <= steps[-1]["hashtags"] == len(table)
    assert (tmp_path / "out" / "concepts.png").is_file()
    # the canonical tags feed the hashtag stage's vocabulary
    from xray_hf import HashtagVocabulary

    vocabulary = HashtagVocabulary.from_dataset(shards(tmp_path / "out"))
    assert set(vocabulary.labels) <= set(table.values())


def test_an_interrupted_run_resumes_to_the_same_shards(tmp_path):
    straight = curate(CurateConfig.from_file(write_config(tmp_path / "a.yaml", tmp_path / "a")))
    config = CurateConfig.from_file(write_config(tmp_path / "b.yaml", tmp_path / "b"))
    curate(config)
    # cut the run after its first shard, as a kill between shards leaves it
    (tmp_path / "b" / "progress.json").write_text(json.dumps(
        {**json.loads((tmp_path / "b" / "progress.json").read_text()), "rows": 20, "shards": 1}))
    for extra in sorted((tmp_path / "b").glob("shard-*.parquet"))[1:]:
        extra.unlink()
    resumed = curate(config)
    assert resumed["resumed_after_rows"] == 20 and resumed["rows_written"] == straight["rows_written"]
    assert shards(tmp_path / "b").to_list() == shards(tmp_path / "a").to_list()
    with pytest.raises(ValueError, match="another config"):
        curate(CurateConfig.from_file(write_config(tmp_path / "c.yaml", tmp_path / "b", shard_size=50)))


def test_bad_curate_configs(tmp_path, caplog):
    with pytest.raises(ValueError, match="unknown curation step"):
        CurateConfig.from_file(write_config(tmp_path / "c.yaml", tmp_path / "x", steps=[{"dedupe": {}}]))
    with pytest.raises(ValueError, match="unknown curate config keys"):
        CurateConfig.from_file(write_config(tmp_path / "c.yaml", tmp_path / "x", shards=3))
    with caplog.at_level("WARNING"):
        CurateConfig.from_file(write_config(tmp_path / "c.yaml", tmp_path / "x",
                                            steps=[{"similarity": {"model": "m"}}, {"balance": {"t": 5}}]))
    assert "run once per pass" in caplog.text
