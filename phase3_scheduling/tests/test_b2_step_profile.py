"""The B2 step profile (phase3_scheduling/benchmarks/b2_step_profile.py) in its tiny CPU form: it
builds the engine, decodes, profiles and prints a row for every kernel family, so the script the
GPU session runs is known to work before device time is spent on it."""

from __future__ import annotations


def test_tiny_profile_prints_every_family(benchmark_script, capsys, tmp_path):
    script = benchmark_script("b2_step_profile")
    result = script.main(["--tiny", "--steps", "2", "--copy-mib", "16",
                          "--out", str(tmp_path / "profile.json")])
    table = capsys.readouterr().out
    for family in script.FAMILIES + ["total"]:
        assert f"| {family} |" in table, f"no row for {family}"
    rows = {r["family"]: r for r in result["rows"]}
    assert result["copy_gbs"] > 0
    # the model's own work lands in its families, not in "other"
    for family in ("qkv", "o", "gate_up", "down", "lm_head", "attention", "rms_norm"):
        assert rows[family]["us_per_step"] > 0, family
        assert rows[family]["mb_per_step"] > 0, family
    assert rows["total"]["floor_us"] > 0
    assert (tmp_path / "profile.json").is_file()


def test_batched_profile_decodes_every_sequence(benchmark_script, capsys):
    """--batch N: N sequences reach decode together; the K/V bytes scale with the batch and the
    contexts, the weights are read once."""
    script = benchmark_script("b2_step_profile")
    one = script.main(["--tiny", "--steps", "2", "--copy-mib", "16"])
    three = script.main(["--tiny", "--steps", "2", "--copy-mib", "16", "--batch", "3",
                         "--prompt-len", "40"])
    assert "batch 3, prompt 40" in capsys.readouterr().out
    rows1 = {r["family"]: r for r in one["rows"]}
    rows3 = {r["family"]: r for r in three["rows"]}
    assert rows3["qkv"]["mb_per_step"] > rows1["qkv"]["mb_per_step"]  # activations of 3 rows
    weights_qkv = rows1["qkv"]["mb_per_step"]
    assert rows3["qkv"]["mb_per_step"] < 1.5 * weights_qkv  # the weights, once
    per_token = rows1["attention"]["mb_per_step"] / one["context"]
    assert abs(rows3["attention"]["mb_per_step"] / (3 * three["context"]) - per_token) < 0.05 * per_token
