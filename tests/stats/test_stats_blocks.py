"""BlockMoments against a row-by-row reference and numpy brute force."""

import numpy as np
import torch

from lightning_sas.stats.blocks import BlockMoments, blocks_from_series


def test_chunked_appends_equal_one_row_at_a_time_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3))
    x[17, 1] = np.nan
    one = BlockMoments(max_blocks=16, shape=(3,))
    for t in range(1000):
        one.append(torch.from_numpy(x[t : t + 1]), [t])
    chunked = BlockMoments(max_blocks=16, shape=(3,))
    for lo in range(0, 1000, 137):
        chunked.append(torch.from_numpy(x[lo : lo + 137]), list(range(lo, min(lo + 137, 1000))))
    a, b = one.arrays(), chunked.arrays()
    for key in ("counts", "sums", "sumsqs", "starts"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
    assert one.cursor.block_len == chunked.cursor.block_len == 64
    # brute force: block b covers rows [64 b, 64 (b + 1))
    for blk, start in enumerate(a["starts"]):
        rows = x[start : start + 64]
        np.testing.assert_allclose(a["sums"][blk], np.nansum(rows, axis=0), rtol=1e-12)
        np.testing.assert_allclose(a["counts"][blk], np.isfinite(rows).sum(0))
    assert int(one.nonfinite.sum()) == 1
    np.testing.assert_allclose(one.mean(from_step=500).numpy(), np.nanmean(x[512:], axis=0), rtol=1e-12)


def test_state_roundtrip_and_offline_rebuild() -> None:
    x = np.sin(np.arange(300) / 7.0)
    blocks = blocks_from_series(x, max_blocks=8)
    again = BlockMoments(max_blocks=8)
    again.load_state_dict(blocks.state_dict())
    again.append(torch.tensor([1.0, 2.0]), [300, 301])
    blocks.append(torch.tensor([1.0, 2.0]), [300, 301])
    np.testing.assert_allclose(again.arrays()["sums"], blocks.arrays()["sums"])
