import huggingface_hub
import numpy as np
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard

from hub_datasets import load_iemocap
from hub_datasets.prepare import main


SESSION_SPLITS = [f"session{session}" for session in range(1, 6)]


def test_parquet_round_trip(iemocap_dir, tmp_path):
    output_dir = tmp_path / "iemocap_parquet"

    main(["iemocap", "--data_dir", str(iemocap_dir), "--output_dir", str(output_dir), "--config", "4class"])
    main(["iemocap", "--data_dir", str(iemocap_dir), "--output_dir", str(output_dir), "--config", "all"])

    assert sorted(path.name for path in (output_dir / "4class").iterdir()) == sorted(
        [f"{split}-00000-of-00001.parquet" for split in SESSION_SPLITS] + ["build_report.txt"]
    )
    assert "nothing skipped" in (output_dir / "4class" / "build_report.txt").read_text()
    card = DatasetCard.load(output_dir / "README.md")
    assert card.data.pretty_name == "IEMOCAP"
    assert [config["config_name"] for config in card.data.configs] == ["4class", "all"]
    assert "leave-one-session-out" in card.text

    original = load_iemocap(iemocap_dir, "4class", cache_dir=tmp_path / "cache")
    reloaded = load_dataset(str(output_dir), "4class", cache_dir=str(tmp_path / "reload_cache"))
    assert list(reloaded) == SESSION_SPLITS
    assert reloaded["session1"].features == original["session1"].features
    for split in SESSION_SPLITS:
        assert reloaded[split].remove_columns("audio").to_list() == original[split].remove_columns("audio").to_list()
    np.testing.assert_array_equal(reloaded["session3"][4]["audio"]["array"], original["session3"][4]["audio"]["array"])
    assert load_dataset(str(output_dir), "all", split="session2").num_rows == 16


def test_push_offline_fails_clearly_after_writing_parquet(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    output_dir = tmp_path / "synthetic_parquet"
    arguments = ["synthetic_emotion", "--output_dir", str(output_dir), "--config", "emotion", "--num_utterances", "10"]

    with pytest.raises(SystemExit, match="Could not push .* as org/name .*hf upload org/name"):
        main([*arguments, "--push_to_hub", "org/name"])

    assert len(list((output_dir / "emotion").glob("session*.parquet"))) == 5
    assert load_dataset(str(output_dir), split="session1").num_rows == 2
