"""ONNX export: the policy as three graphs, the same three passes the torch runtime caches.

    text_encoder.onnx  token_ids (B, T) int64, text_valid (B, T) bool
                       -> text_kv (layers, 2, B, heads, T, head_dim)                     once per instruction
    obs_encoder.onnx   images uint8 (B, cams, H, W, 3), robot_state_norm (B, S_robot), text_kv, text_valid
                       -> prefix_kv (layers, 2, B, heads, P, head_dim), prefix_valid (B, P),  once per observation
                          points (B, 4 * cams) (u, v) in [0, 1], confidence (B, 2 * cams)
                          P = T + cams * (grid / prefix_pool)^2 + 1 (pooled image K/V, the state token)
    denoiser.onnx      x_t (B, horizon, A), t (B,), prefix_kv, prefix_valid
                       -> velocity (B, horizon, A)                                        every Euler step

Point, then act, in one graph: the observation graph is `MoTPolicy.observe` itself (vision expert -> grounding
head -> points, normalised with the tail of the state statistics and appended to the robot's state -> the state
token), so torch and graph cannot drift. A policy without target points has no `points` / `confidence` outputs
(policy/graphs.py `graph_outputs`). The grounding head's top token is an ArgMax and a GatherElements (opset 18,
both in TensorRT 10's ONNX parser).

Batch B, text length T and frame size H x W are dynamic. Image preprocessing (resize to `image_size`,
(x - 127) / 128) is inside the observation graph, so it takes raw uint8 camera frames; the robot's state is
normalised by the runner (the statistics are also in the metadata). The sampler loop and de-normalisation stay
outside the graphs, shared by every backend (policy/runtime.py).

Beside the graphs, `export_manifest.json` (policy/graphs.py) records what was written: the checkpoint sha256,
dtype, opset and, per graph, its file's sha256 and size (and those of any external-data file it references).
Backends hash every graph against it before they run it (policy/backends.py), so a graph whose bytes changed
after export (edited weights with the metadata kept) is refused. `signing_key=` (`mot export --sign KEY`) also
writes `export_manifest.sig`, the ed25519 signature of the manifest's bytes (policy/signing.py), which a runtime
with a trusted key requires.

Every file carries metadata_props: `mot.graph` (role), `mot.checkpoint_sha256` (what backends check
before running it), `mot.config` (PolicyConfig JSON), `mot.preprocessing` (image and state/action
normalisation constants), `mot.dtype`, `mot.format`, `mot.inputs`, `mot.outputs`. Files are written to a
temporary name and renamed, so a killed export never leaves a truncated graph under the real name.

Only the block-causal prefix mask is exportable: the bidirectional ablation has no cacheable text
pass (its text K/V depend on the images), so `export_policy` refuses it.

    mot export --checkpoint runs/ckpt --out runs/ckpt/onnx [--opset 18] [--fp16] [--sign KEY]   (policy/cli.py)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policy.artifacts import atomic_path
from policy.checkpoint import load_checkpoint
from policy.errors import CheckpointError, ExportError
from policy.graphs import (DEFAULT_OPSET, FORMAT, GRAPHS, INPUTS, MANIFEST, MANIFEST_FILE, MANIFEST_FORMAT,  # noqa: F401
                           OUTPUTS, external_data_files, graph_digest, graph_outputs, graph_paths, graph_record,
                           read_export_manifest, read_metadata, write_export_manifest)
from policy.model import MoTPolicy, Prefix
from policy.signing import SigningKey, load_private_key
from policy.spec import PolicySpec, policy_fingerprint

# -- the three graphs as modules ---------------------------------------------------------------------
class TextEncoder(nn.Module):
    """MoTPolicy.encode_text: (token_ids, text_valid) -> text_kv."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, token_ids: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        return self.policy.encode_text(token_ids, text_valid).kv


def resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of torch's antialiased bilinear resize along one axis (align_corners=False).

    Output sample i sits at c_i = (i + 0.5) * s in input pixels, s = n_in / n_out; input pixel j weighs
    max(0, 1 - |j + 0.5 - c_i| / max(s, 1)) (the triangle filter, stretched by s when shrinking: antialiasing),
    normalised over the pixels inside the image, as aten's _upsample_bilinear2d_aa computes them. n_in == n_out
    gives the identity exactly."""
    j = torch.arange(n_in, dtype=torch.float32)
    i = torch.arange(n_out, dtype=torch.float32)
    scale = (j[-1:] + 1.0) / n_out  # (1,): n_in as a tensor, so a dynamic n_in is a graph value, not a guard
    center = (i + 0.5) * scale
    w = torch.relu(1.0 - (j[None, :] + 0.5 - center[:, None]).abs() / torch.clamp(scale, min=1.0))
    return w / w.sum(dim=1, keepdim=True)


def resize_frames(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, cams, H, W, 3) -> float (B, cams, size, size, 3), as policy.vision.preprocess_images resizes
    (F.interpolate bilinear, antialias=True), written as two matrix products so TensorRT can run it: its ONNX
    parser refuses Resize with antialias=1. H, W are dynamic in the graph, so the resize is always in it (at
    (size, size) the weights are the identity); the model's own preprocessing then only normalises."""
    b, cams, h, w, _ = images.shape
    # Channels stay last, so the graph holds no transpose here (a (N, 3, 128, 128) one took 0.3 ms on the CPU):
    # rows as one matmul over (H, W * 3), then columns as a batched matmul over each output row's (W, 3).
    x = images.reshape(b * cams, h, w * 3).float()
    x = torch.matmul(resize_weights(h, size), x)  # (N, size, W * 3)
    x = torch.matmul(resize_weights(w, size), x.reshape(b * cams * size, w, 3))  # (N * size, size, 3)
    return x.reshape(b, cams, size, size, 3)


class ObsEncoder(nn.Module):
    """MoTPolicy.observe on uint8 frames of any size: (images, robot_state_norm, text_kv, text_valid) ->
    (prefix_kv, prefix_valid) + (points, confidence) for a policy with target points."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, images: torch.Tensor, robot_state_norm: torch.Tensor, text_kv: torch.Tensor,
                text_valid: torch.Tensor):
        frames = resize_frames(images, self.policy.cfg.image_size)
        # The model's one observation pass: image tokens attend to the cached text (key padding is the only mask),
        # the grounding head points on their final states, the body's state token reads the pooled image K/V.
        prefix, points, confidence = self.policy.observe(frames, robot_state_norm, Prefix(text_kv, text_valid))
        if points is None:
            return prefix.kv, prefix.valid
        return prefix.kv, prefix.valid, points, confidence


class Denoiser(nn.Module):
    """MoTPolicy.denoise: (x_t, t, prefix_kv, prefix_valid) -> velocity."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: torch.Tensor,
                prefix_valid: torch.Tensor) -> torch.Tensor:
        return self.policy.denoise(x_t, t, Prefix(prefix_kv, prefix_valid))


MODULES = {"text_encoder": TextEncoder, "obs_encoder": ObsEncoder, "denoiser": Denoiser}


def prefix_length(policy: MoTPolicy, text_len: int) -> int:
    """Tokens the body attends to: text + pooled image cells + the state token."""
    return text_len + policy.cfg.body_image_tokens + 1


def example_inputs(policy: MoTPolicy, batch: int = 2, text_len: int = 6, seed: int = 0) -> dict[str, tuple]:
    """Random inputs for each graph (also the parity tests' inputs). text_valid pads the last sample."""
    cfg, dims = policy.cfg, policy.dims
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, text_len), generator=g)
    valid = torch.ones(batch, text_len, dtype=torch.bool)
    valid[-1, text_len // 2:] = False  # padding must be part of what export sees and tests check
    ids[~valid] = 0
    kv_shape = lambda n: (dims.layers, 2, batch, dims.heads, n, dims.head_dim)  # noqa: E731
    prefix_len = prefix_length(policy, text_len)
    prefix_valid = torch.cat([valid, torch.ones(batch, prefix_len - text_len, dtype=torch.bool)], dim=1)
    images = torch.randint(0, 256, (batch, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), generator=g,
                           dtype=torch.uint8)
    return {
        "text_encoder": (ids, valid),
        "obs_encoder": (images, torch.randn(batch, cfg.robot_state_dim, generator=g),
                        torch.randn(kv_shape(text_len), generator=g), valid),
        "denoiser": (torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g), torch.rand(batch, generator=g),
                     torch.randn(kv_shape(prefix_len), generator=g), prefix_valid),
    }


def _dynamic_shapes(policy: MoTPolicy, graph: str):
    """torch.export dims of each input: batch, text length, frame size and prefix length, with their ranges
    (the outputs' dims follow). Example inputs have batch 2 and text length > 1: torch.export would
    specialise a dimension of size 1."""
    from torch.export import Dim

    cfg = policy.cfg
    batch = Dim("batch", min=1, max=1024)
    text_len = Dim("text_len", min=1, max=cfg.max_text_tokens)
    height, width = Dim("height", min=8, max=4096), Dim("width", min=8, max=4096)
    prefix_len = Dim("prefix_len", min=prefix_length(policy, 1), max=prefix_length(policy, cfg.max_text_tokens))
    kv = lambda n: {2: batch, 4: n}  # noqa: E731
    return {
        "text_encoder": {"token_ids": {0: batch, 1: text_len}, "text_valid": {0: batch, 1: text_len}},
        "obs_encoder": {"images": {0: batch, 2: height, 3: width}, "robot_state_norm": {0: batch},
                        "text_kv": kv(text_len), "text_valid": {0: batch, 1: text_len}},
        "denoiser": {"x_t": {0: batch}, "t": {0: batch}, "prefix_kv": kv(prefix_len),
                     "prefix_valid": {0: batch, 1: prefix_len}},
    }[graph]


# -- metadata --------------------------------------------------------------------------------------
def preprocessing_constants(policy: MoTPolicy) -> dict:
    cfg, stats = policy.cfg, policy.norm_stats
    r = cfg.robot_state_dim
    constants = {
        "image": {"layout": "uint8 (B, cams, H, W, 3) RGB", "cameras": list(cfg.cameras), "resize_to": cfg.image_size,
                  "resize": "bilinear, antialias, align_corners=False (as torch's, by matrix products)",
                  "offset": 127.0, "scale": 128.0,
                  "formula": "(x - offset) / scale"},
        "state": {"formula": "(state - mean[:robot_state_dim]) / std[:robot_state_dim] (done by the runner; the "
                             "target points, the rest of mean/std, inside obs_encoder)", "robot_state_dim": r,
                  "mean": stats.state_mean.tolist(), "std": stats.state_std.tolist()},
        "action": {"formula": "action = x * std + mean + delta_mask * state[:A] (done by the runner)",
                   "mean": stats.action_mean.tolist(), "std": stats.action_std.tolist(),
                   "delta_mask": list(cfg.delta_action_mask or (False,) * cfg.action_dim)},
        "sampler": {"method": "euler", "from_t": 1.0, "to_t": 0.0, "num_steps": cfg.num_inference_steps},
        "text": {"tokenizer": "WordPiece from the language model folder", "max_tokens": cfg.max_text_tokens},
    }
    if cfg.target_points is not None:
        constants["points"] = {"layout": "(u, v) in [0, 1] of the object per camera, then of the pad per camera",
                               "cameras": list(cfg.cameras), "confidence": "(object per camera, then pad per camera)"}
    return constants


# -- export ------------------------------------------------------------------------------------------
def _export_one(policy: MoTPolicy, graph: str, path: Path, opset: int) -> None:
    """torch.export + onnxscript (`dynamo=True`): the dynamic frame size and batch export as symbolic dimensions,
    and the graph comes out already optimised (constant folding, dead code removed)."""
    module = MODULES[graph](policy).eval()
    args = example_inputs(policy)[graph]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=list(INPUTS[graph]),
                                    output_names=list(graph_outputs(policy.cfg, graph)),
                                    dynamic_shapes=_dynamic_shapes(policy, graph), optimize=True, verbose=False)
        program.save(str(path))


def _finish(path: Path, graph: str, metadata: dict[str, str], fp16: bool, outputs: tuple[str, ...]) -> None:
    """Names, metadata, optional fp16 conversion, checker; rewrites the file in place (still a temp name)."""
    import onnx

    model = onnx.load(str(path))
    if fp16:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        # Weights and arithmetic in fp16; the graph's inputs/outputs stay fp32 (the runtime contract). LayerNorm
        # stays fp32 (its variance overflows/underflows in fp16): a strongly typed TensorRT engine runs exactly
        # these types, with nothing to keep it in fp32 otherwise (policy/tensorrt.py).
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["LayerNormalization"])
        wrapped = OnnxModel(model)
        wrapped.topological_sort()  # the converter appends its input Casts at the end of the node list
        model = wrapped.model
        del model.graph.value_info[:]  # some are stale around the fp32 LayerNorms; the checker re-infers them
    inputs = [i.name for i in model.graph.input]
    found = [o.name for o in model.graph.output]
    if inputs != list(INPUTS[graph]) or found != list(outputs):
        raise ExportError(f"{graph}: expected inputs {INPUTS[graph]} and outputs {outputs}, "
                          f"the exporter produced {inputs} and {found}")
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mot-policy"
    model.doc_string = f"mot-policy {graph}: " + {
        "text_encoder": "instruction tokens -> per-layer text K/V",
        "obs_encoder": "images + robot state + text K/V -> per-layer prefix K/V"
                       + (" and the target points" if "points" in outputs else ""),
        "denoiser": "noisy chunk, flow time, prefix K/V -> velocity"}[graph]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_policy(policy: MoTPolicy, out_dir: str | Path, *, checkpoint_sha256: str | None = None,
                  opset: int = DEFAULT_OPSET, fp16: bool = False, graphs: tuple[str, ...] = GRAPHS,
                  signing_key: SigningKey | None = None) -> dict[str, Path]:
    """Writes the graphs (atomically) into out_dir with their export manifest; returns {graph: path}.

    checkpoint_sha256: the identity stored in every graph and the manifest (default: `policy_fingerprint(policy)`).
    graphs: a subset re-exports only those; the manifest keeps the other graphs' entries when it is for the same
    checkpoint, dtype and opset. signing_key: an ed25519 private key (PEM path or key) to sign the manifest with.
    """
    cfg = policy.cfg
    if cfg.prefix_mask != "blockwise":
        raise ExportError(f"prefix_mask: export supports 'blockwise' only, received {cfg.prefix_mask!r} (the "
                          "bidirectional ablation has no per-instruction text pass to cache)")
    if opset < DEFAULT_OPSET:
        raise ExportError(f"opset: expected >= {DEFAULT_OPSET} (what the graphs are built and tested for), received {opset}")
    unknown = sorted(set(graphs) - set(GRAPHS))
    if unknown:
        raise ExportError(f"graphs: expected a subset of {GRAPHS}, received unknown {unknown}")
    key = load_private_key(signing_key) if signing_key is not None else None  # a bad key fails before the export
    policy = policy.eval()
    sha = checkpoint_sha256 or policy_fingerprint(policy)
    dtype = "float16" if fp16 else "float32"
    common = {
        "mot.format": FORMAT,
        "mot.checkpoint_sha256": sha,
        "mot.config": json.dumps(cfg.to_dict(), sort_keys=True),
        "mot.preprocessing": json.dumps(preprocessing_constants(policy), sort_keys=True),
        "mot.dtype": dtype,
        "mot.opset": str(opset),
        "mot.torch": torch.__version__,
    }
    manifest = {"format": MANIFEST_FORMAT, "checkpoint_sha256": sha, "dtype": dtype, "opset": opset, "graphs": {}}
    previous = read_export_manifest(out_dir)
    if previous is not None and all(previous[0].get(k) == manifest[k] for k in ("checkpoint_sha256", "dtype", "opset")):
        manifest["graphs"] = {g: r for g, r in previous[0].get("graphs", {}).items() if g in GRAPHS and g not in graphs}
    paths = graph_paths(out_dir)
    for graph in graphs:
        outputs = graph_outputs(cfg, graph)
        meta = {**common, "mot.graph": graph, "mot.inputs": ",".join(INPUTS[graph]), "mot.outputs": ",".join(outputs)}
        with atomic_path(paths[graph], suffix=".onnx") as tmp:  # + its external-data side file, if any
            _export_one(policy, graph, tmp, opset)
            _finish(tmp, graph, meta, fp16, outputs)
            record = graph_record(tmp, paths[graph].name)  # the bytes about to be renamed into place
        manifest["graphs"][graph] = record
        write_export_manifest(out_dir, manifest, key)  # after each graph: a killed export keeps what it finished
    return {g: paths[g] for g in graphs}


def export_missing_graphs(spec: PolicySpec, out_dir: str | Path, graphs: tuple[str, ...], *,
                          fp16: bool = False) -> dict[str, Path]:
    """What a backend runs (policy/backends.py, through policy/lazy.py) when graphs are missing and this process
    has torch: the spec's in-memory policy, else its checkpoint loaded again (it must still be the same one)."""
    policy = spec.policy
    if policy is None:
        policy = load_checkpoint(spec.checkpoint_dir)
        if policy.checkpoint_id != spec.checkpoint_id:
            raise CheckpointError(f"checkpoint: {spec.checkpoint_dir} changed while loading (manifest sha256 expected "
                                  f"{spec.checkpoint_id}, received {policy.checkpoint_id}); load it again")
    return export_policy(policy, out_dir, checkpoint_sha256=spec.checkpoint_id, graphs=graphs, fp16=fp16)


def parity(policy: MoTPolicy, onnx_dir: str | Path, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Max |onnxruntime - torch| per graph on random inputs, and for the target points and their confidence
    (a policy with target points). The whole sampled chunk: policy/cli.py `chunk_parity`."""
    import numpy as np
    import onnxruntime as ort

    out = {}
    inputs = example_inputs(policy, batch=batch, seed=seed)
    for graph, path in graph_paths(onnx_dir).items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {name: x.numpy() for name, x in zip(INPUTS[graph], inputs[graph])}
        got = dict(zip(graph_outputs(policy.cfg, graph), session.run(None, feeds)))
        with torch.no_grad():
            want = MODULES[graph](policy)(*inputs[graph])
        want = dict(zip(graph_outputs(policy.cfg, graph), want if isinstance(want, tuple) else (want,)))
        diff = {k: float(np.abs(got[k].astype(np.float64) - w.numpy().astype(np.float64)).max()) for k, w in want.items()}
        out[graph] = max(v for k, v in diff.items() if k not in ("points", "confidence"))
        out.update({k: diff[k] for k in ("points", "confidence") if k in diff})
    return out


__all__ = ["export_policy", "export_missing_graphs", "read_metadata", "read_export_manifest", "write_export_manifest",
           "external_data_files", "graph_record", "graph_digest", "MANIFEST", "MANIFEST_FILE", "MANIFEST_FORMAT",
           "graph_paths", "graph_outputs", "policy_fingerprint", "example_inputs", "prefix_length", "parity",
           "resize_frames", "ExportError", "GRAPHS", "INPUTS", "OUTPUTS", "FORMAT", "DEFAULT_OPSET"]
