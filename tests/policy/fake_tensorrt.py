"""A fake `tensorrt` whose engines run the ONNX graph in onnxruntime, and a fake cuda-python runtime whose device
memory is host memory: the TensorRT backend's whole data path (profiles, buffers, views, addresses, copies, the
cached K/V read in place, points and velocity back to numpy) runs on a CPU, against the real exported graphs.

What is faked is exactly the API policy/tensorrt.py and policy/cuda.py call; no torch here, so the torch-free runtime
test can use it in a process without torch (`install(monkeypatch_or_None)`).

Engines: `build_serialized_network` returns the parsed ONNX bytes as the "plan"; `deserialize_cuda_engine` makes an
onnxruntime session of them. An execution context computes its outputs when asked for their shapes (reading the
inputs at the addresses it was given, or zeros before any are set, as when the backend sizes its buffers) and
writes them to the output addresses in `execute_async_v3`.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32}


def host_array(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The (shape, dtype) array at address ptr (fake device memory is host memory)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * max(n, 1)).from_address(ptr), dtype=dtype, count=n // dtype.itemsize).reshape(shape)


# -- cuda-python's runtime ------------------------------------------------------------------------------
class FakeCudart(types.ModuleType):
    def __init__(self, devices: int = 1):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.memory, self.calls = devices, {}, []
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h",
                                                    cudaMemcpyDeviceToDevice="d2d")

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (100, 0)  # cudaErrorNoDevice

    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorNoDevice" if err == 100 else b"cudaErrorUnknown"

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"Fake GPU\x00\x00\x00", major=8, minor=7)

    def cudaMalloc(self, nbytes):
        block = np.zeros(nbytes, np.uint8)
        self.memory[block.ctypes.data] = block
        return 0, block.ctypes.data

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        def block(p):  # the device allocation holding address p, or None (host memory)
            return next(((b, len(m)) for b, m in self.memory.items() if b <= p < b + len(m)), None)

        want = {"h2d": (True, False), "d2h": (False, True), "d2d": (True, True)}[kind]
        assert (block(dst) is not None, block(src) is not None) == want, f"cudaMemcpyAsync {kind}: wrong memory"
        for p in (dst, src):
            if block(p) is not None:
                base, size = block(p)
                assert p + nbytes <= base + size, f"cudaMemcpyAsync {kind}: {nbytes} bytes overrun the allocation"
        self.calls.append(kind)
        ctypes.memmove(dst, src, nbytes)
        return (0,)


# -- tensorrt -------------------------------------------------------------------------------------------
class OrtEngine:
    def __init__(self, onnx_bytes: bytes):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: np.dtype(ORT_TYPES[i.type]) for i in self.session.get_inputs()}
        self.outputs = {o.name: np.dtype(ORT_TYPES[o.type]) for o in self.session.get_outputs()}
        self.names = list(self.inputs) + list(self.outputs)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_dtype(self, name):
        return {**self.inputs, **self.outputs}[name]

    def create_execution_context(self):
        return OrtContext(self)


class OrtContext:
    def __init__(self, engine: OrtEngine):
        self.engine, self.shapes, self.addresses, self.results = engine, {}, {}, None
        self.runs = 0

    def set_input_shape(self, name, shape):
        self.shapes[name], self.results = tuple(shape), None
        return name in self.engine.inputs

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        if name in self.engine.inputs:
            self.results = None
        return True

    def _compute(self):
        feeds = {}
        for name, dtype in self.engine.inputs.items():
            shape = self.shapes[name]
            feeds[name] = (host_array(self.addresses[name], shape, dtype).copy() if name in self.addresses
                           else np.zeros(shape, dtype))
        self.results = dict(zip(self.engine.outputs, self.engine.session.run(None, feeds)))

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes[name]
        if self.results is None:
            self._compute()
        return self.results[name].shape

    def execute_async_v3(self, stream):
        if self.results is None:
            self._compute()
        self.runs += 1
        for name, value in self.results.items():
            host_array(self.addresses[name], value.shape, value.dtype)[...] = value
        return True


class FakeTensorRT(types.ModuleType):
    def __init__(self, version: str = "10.3.0.26"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.built: list[bytes] = []
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level=None):
                pass

        class Network:
            onnx = b""

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse(self, data, path=None):
                self.network.onnx = bytes(data)
                return True

            def parse_from_file(self, path):
                with open(path, "rb") as f:
                    return self.parse(f.read())

        class Config:
            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, flag):
                pass

            def add_optimization_profile(self, profile):
                return 0

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.built.append(network.onnx)
                return network.onnx

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return OrtEngine(bytes(data))

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, Parser, Runtime

    @staticmethod
    def nptype(dtype):
        return dtype


def install(monkeypatch=None, devices: int = 1) -> tuple[FakeTensorRT, FakeCudart]:
    """Puts the fakes where `import tensorrt` and `from cuda.bindings import runtime` find them (through
    `monkeypatch.setitem`, undone after the test, or for the rest of the process when monkeypatch is None)."""
    trt, cudart = FakeTensorRT(), FakeCudart(devices)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime, cuda.bindings = cudart, bindings
    modules = {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart}
    for name, module in modules.items():
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, module)
        else:
            sys.modules[name] = module
    return trt, cudart
