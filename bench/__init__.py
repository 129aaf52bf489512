"""Benchmark and demo tools that live beside the package, not in it: they need PyTorch and the
peers (ONNX Runtime, OpenVINO), which a deployment of pe-port does not. Tests and `scripts/`
import them from the repository."""
