"""Every bad input raises ValueError/TypeError naming the field, the expected and the received."""

import numpy as np
import pytest
import torch

from policy import MoTPolicy

from .conftest import make_batch


@pytest.fixture(scope="module")
def policy(tiny_cfg):
    return MoTPolicy(tiny_cfg)


def _case(tiny_cfg, name):
    b = make_batch(tiny_cfg, batch_size=2)
    s = tiny_cfg.image_size
    if name == "missing camera":
        del b["images"]["wrist"]
        return b, ValueError, r"images: expected cameras \['front', 'wrist'\].*missing \['wrist'\]"
    if name == "extra camera":
        b["images"]["top"] = b["images"]["front"]
        return b, ValueError, r"images:.*unknown \['top'\]"
    if name == "float image":
        b["images"]["front"] = b["images"]["front"].astype(np.float32)
        return b, TypeError, r"images\['front'\]: expected dtype uint8, received float32"
    if name == "image without channels":
        b["images"]["front"] = b["images"]["front"][..., 0]
        return b, ValueError, r"images\['front'\]: expected shape \(B, H, W, 3\).*received \(2, %d, %d\)" % (s, s)
    if name == "cameras disagree":
        b["images"]["wrist"] = b["images"]["wrist"][:, : s // 2]
        return b, ValueError, r"images\['wrist'\]: expected the same shape"
    if name == "list image":
        b["images"]["front"] = b["images"]["front"].tolist()
        return b, TypeError, r"images\['front'\]: expected a numpy array or torch tensor"
    if name == "float64 state":
        b["state"] = b["state"].astype(np.float64)
        return b, TypeError, r"state: expected dtype float32, received float64"
    if name == "wrong state width":
        b["state"] = b["state"][:, :5]
        return b, ValueError, r"state: expected shape \(B, 7\), received \(2, 5\)"
    if name == "nan state":
        b["state"][1, 3] = np.nan
        return b, ValueError, r"state: expected finite values, received NaN/inf at index \[1, 3\]"
    if name == "inf state":
        b["state"][0, 0] = np.inf
        return b, ValueError, r"state: expected finite values"
    if name == "empty instruction":
        b["instruction"][1] = "   "
        return b, ValueError, r"instruction\[1\]: expected a non-empty instruction"
    if name == "instruction as str":
        b["instruction"] = "pick up the red cube"
        return b, TypeError, r"instruction: expected list\[str\]"
    if name == "instruction not str":
        b["instruction"][0] = 42
        return b, TypeError, r"instruction\[0\]: expected str, received int"
    if name == "over-long instruction":
        b["instruction"][0] = "pick up the red cube " * 40
        return b, ValueError, r"instruction\[0\]: expected at most %d tokens" % tiny_cfg.max_text_tokens
    if name == "batch sizes disagree":
        b["state"] = b["state"][:1]
        return b, ValueError, r"batch: expected one non-zero batch size across fields.*'state': 1"
    if name == "three instructions":
        b["instruction"].append("go")
        return b, ValueError, r"batch: expected one non-zero batch size.*'instruction': 3"
    if name == "missing state":
        del b["state"]
        return b, ValueError, r"batch: missing field\(s\) \['state'\]"
    if name == "not a dict":
        return [b], TypeError, r"batch: expected a dict"
    if name == "wrong action shape":
        b["actions"] = b["actions"][:, :3]
        return b, ValueError, r"actions: expected shape \(B, %d, 7\), received \(2, 3, 7\)" % tiny_cfg.horizon
    if name == "nan action":
        b["actions"][0, 0, 0] = np.nan
        return b, ValueError, r"actions: expected finite values"
    raise AssertionError(name)


CASES = ["missing camera", "extra camera", "float image", "image without channels", "cameras disagree",
         "list image", "float64 state", "wrong state width", "nan state", "inf state", "empty instruction",
         "instruction as str", "instruction not str", "over-long instruction", "batch sizes disagree",
         "three instructions", "missing state", "not a dict", "wrong action shape", "nan action"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_raises_a_clear_error(policy, tiny_cfg, name):
    batch, error, pattern = _case(tiny_cfg, name)
    with pytest.raises(error, match=pattern):
        if "action" in name:
            policy.compute_loss(batch)
        else:
            policy.sample_actions(batch, num_steps=1)


def test_good_input_in_torch_or_numpy_and_any_image_size_works(policy, tiny_cfg):
    b = make_batch(tiny_cfg, batch_size=1, actions=False)
    b["images"] = {k: torch.from_numpy(np.ascontiguousarray(v[:, :50, :70])) for k, v in b["images"].items()}
    chunk = policy.sample_actions(b, num_steps=1)
    assert chunk.shape == (1, tiny_cfg.horizon, tiny_cfg.action_dim)


def test_noise_of_wrong_shape_is_refused(policy, tiny_cfg):
    with pytest.raises(ValueError, match=r"noise: expected shape \(2, %d, 7\)" % tiny_cfg.horizon):
        policy.sample_actions(make_batch(tiny_cfg, actions=False), noise=torch.zeros(2, 3, 7))


def test_torch_and_numpy_inputs_get_the_same_dtype_message(policy, tiny_cfg):
    """One validation (policy/validation.py, numpy) for both: a torch tensor's dtype is named as numpy names it."""
    messages = []
    for as_torch in (False, True):
        b = make_batch(tiny_cfg, batch_size=1, actions=False)
        b["state"] = b["state"].astype(np.float64)
        if as_torch:
            b["state"] = torch.from_numpy(b["state"])
        with pytest.raises(TypeError) as e:
            policy.sample_actions(b, num_steps=1)
        messages.append(str(e.value))
    assert messages == ["state: expected dtype float32, received float64"] * 2
