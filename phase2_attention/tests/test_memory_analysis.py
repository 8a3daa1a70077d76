import math

from phase2_attention.memory_analysis import (
    Request, max_concurrent, reserved_tokens, sample_requests, utilization,
)


def test_reservation_schemes_on_one_request():
    r = Request(prompt_len=100, output_len=200, progress=0.5)
    assert r.current_len == 200
    assert reserved_tokens(r, "orca_max", 16, 2048) == 2048
    assert reserved_tokens(r, "orca_pow2", 16, 2048) == 512
    assert reserved_tokens(r, "orca_oracle", 16, 2048) == 300
    assert reserved_tokens(r, "paged", 16, 2048) == 208


def test_sampled_lengths_follow_the_dataset_means():
    reqs = sample_requests(4000, "sharegpt", max_model_len=100_000, seed=1)
    assert abs(sum(r.prompt_len for r in reqs) / 4000 - 161.3) < 12
    assert abs(sum(r.output_len for r in reqs) / 4000 - 337.9) < 25


def test_paging_wastes_at_most_one_partial_block_per_request():
    reqs = sample_requests(500, "sharegpt", seed=2)
    used = sum(r.current_len for r in reqs)
    bound = used / (used + 15 * len(reqs))
    assert utilization(reqs, "paged", 16) >= bound
    assert utilization(reqs, "orca_max") < utilization(reqs, "orca_oracle") < utilization(reqs, "paged")


def test_concurrency_from_the_real_manager_matches_block_arithmetic():
    reqs = sample_requests(300, "sharegpt", seed=3)
    fit = max_concurrent(reqs, "paged", 50_000, 16)
    blocks = [math.ceil(r.current_len / 16) for r in reqs]
    assert sum(blocks[:fit]) <= 50_000 // 16 < sum(blocks[: fit + 1])
    assert max_concurrent(reqs, "orca_max", 50_000) == 50_000 // 2048
