"""policy/pointing.py: token scores and in-cell offsets -> image points in the target-point layout."""

import pytest
import torch

from policy.pointing import pointed_uv


def test_pointed_uv_takes_each_cameras_top_token_and_its_offset():
    grid, cams = 4, 2
    scores = torch.full((1, cams * grid * grid, 2), -5.0)
    scores[0, 5, 0] = 3.0  # object: camera 0, row 1, column 1
    scores[0, 16 + 14, 0] = 3.0  # object: camera 1, row 3, column 2
    scores[0, 2, 1] = 3.0  # pad: camera 0, row 0, column 2
    scores[0, 16, 1] = 3.0  # pad: camera 1, row 0, column 0
    scores[0, 6, 0] = 2.9  # a close second for the object: a hard choice, not a point in between
    centres = pointed_uv(scores, None, cams, grid)
    assert centres.tolist() == [[0.375, 0.375, 0.625, 0.875, 0.625, 0.125, 0.125, 0.125]]
    offsets = torch.zeros(1, cams * grid * grid, 2, 2)
    offsets[0, 5, 0] = torch.tensor([0.25, -0.25])  # object's own offset at its token
    offsets[0, 5, 1] = torch.tensor([0.4, 0.4])  # the pad's offset at the same token: not read
    offsets[0, 16, 1] = torch.tensor([-0.5, -0.5])  # pad, camera 1: clipped at the image edge
    moved = pointed_uv(scores, offsets, cams, grid)
    expected = [0.375 + 0.25 / grid, 0.375 - 0.25 / grid, 0.625, 0.875, 0.625, 0.125, 0.0, 0.0]
    assert moved[0].tolist() == pytest.approx(expected)


def test_pointed_uv_refuses_a_token_count_that_is_not_the_grid():
    with pytest.raises(ValueError, match=r"scores: expected 2 x 4x4 = 32 image tokens, received 30"):
        pointed_uv(torch.zeros(1, 30, 2), None, 2, 4)
