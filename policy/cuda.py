"""CUDA device memory for the TensorRT backend, through cuda-python's runtime bindings (no torch).

    pip install cuda-python          # the `cuda.bindings.runtime` module (older 12.x releases: `cuda.cudart`)

The backend needs a stream, device buffers, and copies between host (numpy) and device on that stream; this is
all of it. Every call's error code is checked: `CudaError` names the call and CUDA's error name. The calls take
the bindings module as a value (`Cuda(cudart)`), so CPU tests drive them with a fake one.
"""

from __future__ import annotations

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error (the message names the call and the error)."""


def import_cudart():
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (cuda-python >= 12.6) or `cuda.cudart` (older)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise RuntimeError("backend 'tensorrt': the `cuda-python` package is not installed (device buffers and "
                               "the stream go through it; `pip install cuda-python`, see docs/deploy.md)") from e
    return cudart


class DeviceArray:
    """Device memory holding a (shape, dtype) array: owned (freed with this object) or a view of another's."""

    def __init__(self, cuda: "Cuda", ptr: int, shape: tuple[int, ...], dtype, owned: bool):
        self.cuda, self.ptr, self.shape, self.dtype, self.owned = cuda, int(ptr), tuple(shape), np.dtype(dtype), owned

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def view(self, shape: tuple[int, ...]) -> "DeviceArray":
        """The first prod(shape) elements as a (shape) array: a buffer allocated at its largest shape, in use."""
        view = DeviceArray(self.cuda, self.ptr, shape, self.dtype, owned=False)
        if view.nbytes > self.nbytes:
            raise CudaError(f"cuda view: shape {tuple(shape)} needs {view.nbytes} bytes, the buffer holds {self.nbytes}")
        return view

    def __del__(self):
        if self.owned and self.ptr:
            try:
                self.cuda.free(self.ptr)
            except Exception:  # interpreter shutdown (the bindings already gone): the process frees it anyway
                pass
            self.ptr = 0


class Cuda:
    """One device and one stream: allocation, stream-ordered copies, synchronisation."""

    def __init__(self, cudart):
        self.rt = cudart
        count = self._call("cudaGetDeviceCount", cudart.cudaGetDeviceCount(), raise_error=False)
        if not count:
            raise RuntimeError("backend 'tensorrt': expected a CUDA device, cudaGetDeviceCount found none (no GPU, or "
                               "no driver)")
        self.stream = self._call("cudaStreamCreate", cudart.cudaStreamCreate())
        self.stream_handle = int(self.stream)

    def _call(self, call: str, result, raise_error: bool = True):
        """cuda-python returns (error, *values): raise on an error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            if not raise_error:
                return None
            name = self.rt.cudaGetErrorName(err)[1]
            raise CudaError(f"cuda {call}: {name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def device_name(self) -> str:
        """e.g. "NVIDIA Jetson AGX Orin (sm_87)": what engines are keyed by."""
        props = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self._call(
            "cudaGetDevice", self.rt.cudaGetDevice())))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return f"{name.rstrip(chr(0)).strip()} (sm_{props.major}{props.minor})"

    def empty(self, shape: tuple[int, ...], dtype) -> DeviceArray:
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return DeviceArray(self, self._call("cudaMalloc", self.rt.cudaMalloc(nbytes)), shape, dtype, owned=True)

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.cudaFree(ptr))

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        if nbytes:
            self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, getattr(self.rt.cudaMemcpyKind, kind),
                                                                  self.stream))

    def upload(self, dst: DeviceArray, host: np.ndarray) -> None:
        """host (C-contiguous, dst's dtype and size) -> dst, on the stream: keep `host` alive until `synchronize`."""
        self._copy(dst.ptr, host.ctypes.data, host.nbytes, "cudaMemcpyHostToDevice")

    def to_device(self, host: np.ndarray) -> DeviceArray:
        host = np.ascontiguousarray(host)
        out = self.empty(host.shape, host.dtype)
        self.upload(out, host)
        self.synchronize()
        return out

    def to_host(self, array: DeviceArray) -> np.ndarray:
        host = np.empty(array.shape, array.dtype)
        self._copy(host.ctypes.data, array.ptr, array.nbytes, "cudaMemcpyDeviceToHost")
        self.synchronize()
        return host

    def clone(self, array: DeviceArray) -> DeviceArray:
        """An owned copy (a buffer the next call overwrites, kept by the runner's caches)."""
        out = self.empty(array.shape, array.dtype)
        self._copy(out.ptr, array.ptr, array.nbytes, "cudaMemcpyDeviceToDevice")
        self.synchronize()
        return out

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(self.stream))


__all__ = ["Cuda", "CudaError", "DeviceArray", "import_cudart"]
