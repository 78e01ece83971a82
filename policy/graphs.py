"""The exported graphs' contract, without torch: names, I/O, metadata, and the export manifest beside them.

policy/export.py writes the graphs (torch); the backends (policy/backends.py, policy/tensorrt.py) read and verify
them with this module alone, so a robot that runs them needs no torch.

    text_encoder.onnx  token_ids (B, T) int64, text_valid (B, T) bool -> text_kv
    obs_encoder.onnx   images uint8 (B, cams, H, W, 3), robot_state_norm (B, S_robot), text_kv, text_valid
                       -> prefix_kv, prefix_valid, points (B, 4 * cams), confidence (B, 2 * cams)
                          (points and confidence only for a policy with target points: `graph_outputs`)
    denoiser.onnx      x_t (B, horizon, A), t (B,), prefix_kv, prefix_valid -> velocity (B, horizon, A)

Shapes in detail: policy/export.py. `export_manifest.json` records the checkpoint sha256, dtype, opset and, per
graph, its file's sha256 and size (and those of any external-data file it references); `export_manifest.sig` is
the ed25519 signature of its bytes (`mot export --sign KEY`).
"""

from __future__ import annotations

import json
from pathlib import Path

from policy.artifacts import atomic_write_bytes, sha256_bytes, sha256_file
from policy.config import PolicyConfig
from policy.signing import sign_bytes, signature_path

FORMAT = "mot-onnx/2"  # /2: the observation graph takes the robot's state and outputs the target points
MANIFEST_FILE = "export_manifest.json"
MANIFEST = MANIFEST_FILE
MANIFEST_FORMAT = "mot-onnx-manifest/1"
GRAPHS = ("text_encoder", "obs_encoder", "denoiser")
DEFAULT_OPSET = 18  # what the graphs are exported with and tested for (TensorRT 10 parses opsets 9-20)

# Graph I/O names, the contract between export and every backend.
INPUTS = {
    "text_encoder": ("token_ids", "text_valid"),
    "obs_encoder": ("images", "robot_state_norm", "text_kv", "text_valid"),
    "denoiser": ("x_t", "t", "prefix_kv", "prefix_valid"),
}
OUTPUTS = {
    "text_encoder": ("text_kv",),
    "obs_encoder": ("prefix_kv", "prefix_valid"),
    "denoiser": ("velocity",),
}
# What the observation graph outputs too when the policy points (cfg.target_points): a policy without target points
# has no such outputs at all (not zero-width ones, which not every TensorRT version binds).
POINT_OUTPUTS = ("points", "confidence")


def graph_outputs(cfg: PolicyConfig, graph: str) -> tuple[str, ...]:
    """The output names of `graph` for a policy of config `cfg`."""
    extra = POINT_OUTPUTS if graph == "obs_encoder" and cfg.target_points is not None else ()
    return OUTPUTS[graph] + extra


def graph_paths(directory: str | Path) -> dict[str, Path]:
    return {g: Path(directory) / f"{g}.onnx" for g in GRAPHS}


def read_metadata(path: str | Path | bytes) -> dict[str, str]:
    """metadata_props of an ONNX file (without loading its external data), or of a model's bytes."""
    import onnx

    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


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


__all__ = ["FORMAT", "MANIFEST", "MANIFEST_FILE", "MANIFEST_FORMAT", "GRAPHS", "DEFAULT_OPSET", "INPUTS", "OUTPUTS",
           "POINT_OUTPUTS", "graph_outputs", "graph_paths", "read_metadata", "external_data_files", "graph_record",
           "graph_digest", "read_export_manifest", "write_export_manifest"]
