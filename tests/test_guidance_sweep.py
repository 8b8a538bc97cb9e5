"""ddpm_pipeline.guidance_sweep: the saved guidance scale is chosen by measurement, and the card shows the sweep."""

import json

from ddpm_pipeline import DDPMMnistPipeline
from ddpm_pipeline.guidance_sweep import CLEAR_MARGIN, SWEEP_FILE, choose, main
from tests.conftest import tiny_pipeline


def row(scale, fid, clear, real_clear=0.96):
    return {"guidance_scale": scale, "fid": fid, "clear_rate": clear, "real_clear_rate": real_clear}


def test_the_lowest_fid_among_readable_scales_wins():
    rows = [row(1.0, 10.0, 0.80), row(1.5, 12.0, 0.96 - CLEAR_MARGIN), row(2.0, 15.0, 0.98), row(2.5, 20.0, 0.99)]
    assert choose(rows)["guidance_scale"] == 1.5  # 1.0 has the lowest FID, but its digits are not readable
    assert choose([row(1.0, 10.0, 0.5), row(2.0, 30.0, 0.7)])["guidance_scale"] == 2.0  # none readable: the clearest


def test_a_sweep_is_saved_and_becomes_the_default_call_and_the_cards_table(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    main([str(tmp_path), "--scales", "1,3", "--num_samples", "20", "--save"])
    result = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert [r["guidance_scale"] for r in result["rows"]] == [1.0, 3.0] and result["chosen"] in (1.0, 3.0)
    assert result["reference"] == "embedded" and result["num_samples"] == 20
    reloaded = DDPMMnistPipeline.from_pretrained(tmp_path)
    assert reloaded.config.default_guidance_scale == result["chosen"]
    card = (tmp_path / "README.md").read_text()
    assert "How the default guidance was chosen" in card and "| real held-out digits |" in card
    assert f"**{result['chosen']:g}**" in card
