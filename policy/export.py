"""ONNX export: the policy as three graphs, the same three passes the torch runtime caches.

    text_encoder.onnx  token_ids (B, T) int64, text_valid (B, T) bool
                       -> text_kv (layers, 2, B, heads, T, head_dim)                    once per instruction
    obs_encoder.onnx   images uint8 (B, cams, H, W, 3), state_norm (B, S), text_kv, text_valid
                       -> prefix_kv (layers, 2, B, heads, P, head_dim), prefix_valid (B, P)
                          P = T + cams * grid^2 + 1 (the state token)                     once per observation
    denoiser.onnx      x_t (B, horizon, A), t (B,), prefix_kv, prefix_valid
                       -> velocity (B, horizon, A)                                        every Euler step

Batch B, text length T and frame size H x W are dynamic. Image preprocessing (resize to
`image_size`, (x - 127) / 128) is inside the observation graph, so it takes raw uint8 camera frames;
the state is normalised by the runner (the statistics are also in the metadata). The sampler loop
and de-normalisation stay outside the graphs, shared by every backend (policy/runtime.py).

Beside the graphs, `export_manifest.json` records what was written: the checkpoint sha256, dtype, opset and,
per graph, its file's sha256 and size (and those of any external-data file it references). Backends hash every
graph against it before they run it (policy/backends.py), so a graph whose bytes changed after export (edited
weights with the metadata kept) is refused. `signing_key=` (`mot export --sign KEY`) also writes
`export_manifest.sig`, the ed25519 signature of the manifest's bytes (policy/signing.py), which a runtime with a
trusted key requires.

Every file carries metadata_props: `mot.graph` (role), `mot.checkpoint_sha256` (what backends check
before running it), `mot.config` (PolicyConfig JSON), `mot.preprocessing` (image and state/action
normalisation constants), `mot.dtype`, `mot.format`. Files are written to a temporary name and
renamed, so a killed export never leaves a truncated graph under the real name.

Metadata says what a graph claims to be, not what its weights are: a graph with edited weights keeps its
metadata. So the export also writes

    export_manifest.json   {"format": "mot-onnx-manifest/1", "checkpoint_sha256": ..., "files": {name: sha256}}

with the sha256 of every graph file and of any external-data file a graph references; backends verify every
file against it before running a graph (`verify_export`), and build TensorRT engines keyed by those hashes.

Only the block-causal prefix mask is exportable: the bidirectional ablation has no cacheable text
pass (its text K/V depend on the images), so `export_policy` refuses it.

    mot export --checkpoint runs/ckpt --out runs/ckpt/onnx [--opset 18] [--fp16] [--sign KEY]   (policy/cli.py)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policy.artifacts import atomic_path, atomic_write_bytes, sha256_bytes, sha256_file
from policy.errors import ExportError
from policy.model import MoTPolicy, Prefix
from policy.signing import SigningKey, load_private_key, sign_bytes, signature_path
from policy.vision import preprocess_images

FORMAT = "mot-onnx/1"
MANIFEST_FILE = "export_manifest.json"
MANIFEST = MANIFEST_FILE
MANIFEST_FORMAT = "mot-onnx-manifest/1"
GRAPHS = ("text_encoder", "obs_encoder", "denoiser")
DEFAULT_OPSET = 18  # antialiased Resize (the image preprocessing) needs opset >= 18

# Graph I/O names, the contract between export and every backend.
INPUTS = {
    "text_encoder": ("token_ids", "text_valid"),
    "obs_encoder": ("images", "state_norm", "text_kv", "text_valid"),
    "denoiser": ("x_t", "t", "prefix_kv", "prefix_valid"),
}
OUTPUTS = {
    "text_encoder": ("text_kv",),
    "obs_encoder": ("prefix_kv", "prefix_valid"),
    "denoiser": ("velocity",),
}


# -- the three graphs as modules ---------------------------------------------------------------------
class TextEncoder(nn.Module):
    """MoTPolicy.encode_text: (token_ids, text_valid) -> text_kv."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, token_ids: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        return self.policy.encode_text(token_ids, text_valid).kv


class ObsEncoder(nn.Module):
    """MoTPolicy.encode_images + encode_state, uint8 frames in (preprocessing inside the graph)."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, images: torch.Tensor, state_norm: torch.Tensor, text_kv: torch.Tensor,
                text_valid: torch.Tensor):
        p, size = self.policy, self.policy.cfg.image_size
        b, cams, h, w, _ = images.shape
        # H, W are dynamic in the graph, so the resize is always in it: at (image_size, image_size)
        # the antialiased bilinear Resize samples pixel centres exactly (an identity), elsewhere it is
        # the same filter as policy.vision.preprocess_images. The rest is preprocess_images itself.
        x = images.reshape(b * cams, h, w, 3).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.permute(0, 2, 3, 1).reshape(b, cams, size, size, 3)
        tokens = p.image_embed(p.trunk(preprocess_images(x, size)))
        # Image tokens attend to the cached text and to each other (block-causal: key padding only).
        ones = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        text = Prefix(text_kv, text_valid)
        _, kv = p._forward([("image", tokens, None)], text, ones)
        prefix = p.encode_state(state_norm, text.extend(kv, ones))
        return prefix.kv, prefix.valid


class Denoiser(nn.Module):
    """MoTPolicy.denoise: (x_t, t, prefix_kv, prefix_valid) -> velocity."""

    def __init__(self, policy: MoTPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: torch.Tensor,
                prefix_valid: torch.Tensor) -> torch.Tensor:
        return self.policy.denoise(x_t, t, Prefix(prefix_kv, prefix_valid))


MODULES = {"text_encoder": TextEncoder, "obs_encoder": ObsEncoder, "denoiser": Denoiser}


def example_inputs(policy: MoTPolicy, batch: int = 2, text_len: int = 6, seed: int = 0) -> dict[str, tuple]:
    """Random inputs for each graph (also the parity tests' inputs). text_valid pads the last sample."""
    cfg, dims = policy.cfg, policy.dims
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, text_len), generator=g)
    valid = torch.ones(batch, text_len, dtype=torch.bool)
    valid[-1, text_len // 2:] = False  # padding must be part of what export sees and tests check
    ids[~valid] = 0
    kv_shape = lambda n: (dims.layers, 2, batch, dims.heads, n, dims.head_dim)  # noqa: E731
    prefix_len = text_len + cfg.image_tokens + 1  # + the state token
    prefix_valid = torch.cat([valid, torch.ones(batch, prefix_len - text_len, dtype=torch.bool)], dim=1)
    images = torch.randint(0, 256, (batch, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), generator=g,
                           dtype=torch.uint8)
    return {
        "text_encoder": (ids, valid),
        "obs_encoder": (images, torch.randn(batch, cfg.state_dim, generator=g), torch.randn(kv_shape(text_len), generator=g),
                        valid),
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
    body = 1  # the state token
    prefix_len = Dim("prefix_len", min=1 + cfg.image_tokens + body, max=cfg.max_text_tokens + cfg.image_tokens + body)
    kv = lambda n: {2: batch, 4: n}  # noqa: E731
    return {
        "text_encoder": {"token_ids": {0: batch, 1: text_len}, "text_valid": {0: batch, 1: text_len}},
        "obs_encoder": {"images": {0: batch, 2: height, 3: width}, "state_norm": {0: batch},
                        "text_kv": kv(text_len), "text_valid": {0: batch, 1: text_len}},
        "denoiser": {"x_t": {0: batch}, "t": {0: batch}, "prefix_kv": kv(prefix_len),
                     "prefix_valid": {0: batch, 1: prefix_len}},
    }[graph]


# -- metadata --------------------------------------------------------------------------------------
def preprocessing_constants(policy: MoTPolicy) -> dict:
    cfg, stats = policy.cfg, policy.norm_stats
    return {
        "image": {"layout": "uint8 (B, cams, H, W, 3) RGB", "cameras": list(cfg.cameras), "resize_to": cfg.image_size,
                  "resize": "bilinear, antialias, align_corners=False", "offset": 127.0, "scale": 128.0,
                  "formula": "(x - offset) / scale"},
        "state": {"formula": "(state - mean) / std (done by the runner)", "mean": stats.state_mean.tolist(),
                  "std": stats.state_std.tolist()},
        "action": {"formula": "action = x * std + mean + delta_mask * state[:A] (done by the runner)",
                   "mean": stats.action_mean.tolist(), "std": stats.action_std.tolist(),
                   "delta_mask": list(cfg.delta_action_mask or (False,) * cfg.action_dim)},
        "sampler": {"method": "euler", "from_t": 1.0, "to_t": 0.0, "num_steps": cfg.num_inference_steps},
        "text": {"tokenizer": "WordPiece from the language model folder", "max_tokens": cfg.max_text_tokens},
    }


def policy_fingerprint(policy: MoTPolicy) -> str:
    """The identity graphs and engines are keyed by: the checkpoint's sha256 when the policy was loaded
    from one (`policy.checkpoint_id`), else a sha256 over config + every weight (an unsaved policy)."""
    if getattr(policy, "checkpoint_id", None):
        return policy.checkpoint_id
    h = hashlib.sha256(json.dumps(policy.cfg.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(policy.norm_stats.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return "unsaved-" + h.hexdigest()


def read_metadata(path: str | Path | bytes) -> dict[str, str]:
    """metadata_props of an ONNX file (without loading its external data), or of a model's bytes."""
    import onnx

    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# -- the export manifest: sha256 of every file written ---------------------------------------------
def external_data_files(path: str | Path) -> list[str]:
    """Locations (relative to the graph's folder) of the external-data files an ONNX file references."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for tensor in list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute
                                                    if a.type == onnx.AttributeProto.TENSOR]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found |= {e.value for e in tensor.external_data if e.key == "location"}
    return sorted(found)


def graph_record(path: str | Path, name: str | None = None) -> dict:
    """{file, sha256, bytes, external_data: {location: sha256}} of one graph file (`name`: its final file name,
    when `path` is still a temporary one)."""
    path = Path(path)
    return {"file": name or path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "external_data": {loc: sha256_file(path.parent / loc) for loc in external_data_files(path)}}


def graph_digest(record: dict) -> str:
    """What a graph's bytes are keyed by (TensorRT engines): its file's sha256, or, when it has external data, the
    sha256 over the file's and every external file's sha256."""
    if not record.get("external_data"):
        return record["sha256"]
    return sha256_bytes(json.dumps([record["sha256"], record["external_data"]], sort_keys=True).encode())


def read_export_manifest(directory: str | Path) -> tuple[dict, bytes] | None:
    """(directory/export_manifest.json parsed, its bytes), None when there is none or it is not one of ours."""
    path = Path(directory) / MANIFEST_FILE
    data = path.read_bytes() if path.is_file() else b""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return (manifest, data) if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def write_export_manifest(directory: str | Path, manifest: dict, signing_key=None) -> Path:
    """Writes export_manifest.json atomically; with `signing_key` (a loaded ed25519 private key) its signature
    export_manifest.sig too, else removes a signature that no longer belongs to it."""
    path = Path(directory) / MANIFEST_FILE
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    signature_path(path).unlink(missing_ok=True)  # a stale signature must never sit beside a new manifest
    atomic_write_bytes(path, data)
    if signing_key is not None:
        atomic_write_bytes(signature_path(path), sign_bytes(data, signing_key))
    return path


# -- export ------------------------------------------------------------------------------------------
def _export_one(policy: MoTPolicy, graph: str, path: Path, opset: int) -> None:
    """torch.export + onnxscript (`dynamo=True`): the TorchScript exporter cannot express the antialiased
    resize of the observation graph, and the dynamo graph comes out already optimised (constant folding,
    dead code removed)."""
    module = MODULES[graph](policy).eval()
    args = example_inputs(policy)[graph]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=list(INPUTS[graph]),
                                    output_names=list(OUTPUTS[graph]), dynamic_shapes=_dynamic_shapes(policy, graph),
                                    optimize=True, verbose=False)
        program.save(str(path))


def _finish(path: Path, graph: str, metadata: dict[str, str], fp16: bool) -> None:
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
    outputs = [o.name for o in model.graph.output]
    if inputs != list(INPUTS[graph]) or outputs != list(OUTPUTS[graph]):
        raise ExportError(f"{graph}: expected inputs {INPUTS[graph]} and outputs {OUTPUTS[graph]}, "
                          f"the exporter produced {inputs} and {outputs}")
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mot-policy"
    model.doc_string = f"mot-policy {graph}: " + {
        "text_encoder": "instruction tokens -> per-layer text K/V",
        "obs_encoder": "images + state + text K/V -> per-layer prefix K/V",
        "denoiser": "noisy chunk, flow time, prefix K/V -> velocity"}[graph]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def graph_paths(directory: str | Path) -> dict[str, Path]:
    return {g: Path(directory) / f"{g}.onnx" for g in GRAPHS}


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
        raise ExportError(f"opset: expected >= {DEFAULT_OPSET} (antialiased Resize), received {opset}")
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
        meta = {**common, "mot.graph": graph, "mot.inputs": ",".join(INPUTS[graph]),
                "mot.outputs": ",".join(OUTPUTS[graph])}

        def write(tmp: Path, graph=graph, meta=meta) -> None:
            _export_one(policy, graph, tmp, opset)
            _finish(tmp, graph, meta, fp16)

        with atomic_path(paths[graph], suffix=".onnx") as tmp:  # + its external-data side file, if any
            write(tmp)
            record = graph_record(tmp, paths[graph].name)  # the bytes about to be renamed into place
        manifest["graphs"][graph] = record
        write_export_manifest(out_dir, manifest, key)  # after each graph: a killed export keeps what it finished
    return {g: paths[g] for g in graphs}


def parity(policy: MoTPolicy, onnx_dir: str | Path, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Max |onnxruntime - torch| per graph on random inputs (and for a full chunk through the runners)."""
    import numpy as np
    import onnxruntime as ort

    out = {}
    inputs = example_inputs(policy, batch=batch, seed=seed)
    for graph, path in graph_paths(onnx_dir).items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {name: x.numpy() for name, x in zip(INPUTS[graph], inputs[graph])}
        got = session.run(None, feeds)
        with torch.no_grad():
            want = MODULES[graph](policy)(*inputs[graph])
        want = want if isinstance(want, tuple) else (want,)
        out[graph] = max(float(np.abs(g.astype(np.float64) - w.numpy().astype(np.float64)).max())
                         for g, w in zip(got, want))
    return out


__all__ = ["export_policy", "read_metadata", "read_export_manifest", "write_export_manifest", "external_data_files",
           "graph_record", "graph_digest", "MANIFEST", "MANIFEST_FILE", "MANIFEST_FORMAT", "graph_paths",
           "policy_fingerprint", "example_inputs", "parity", "ExportError", "GRAPHS", "INPUTS", "OUTPUTS"]
