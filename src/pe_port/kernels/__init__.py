"""Hand-written kernels, one file per operation; each holds that op's CPU and GPU kernels.

| file | what it computes | CPU | GPU |
|---|---|---|---|
| `dense.py` | matmul + bias + GELU / LayerScale / residual | `cpu_dense` | `gpu_dense` |
| `attention.py` | softmax attention, heads merged | `cpu_attention` | `gpu_flash_attention` |
| `layer_norm.py` | LayerNorm over the last axis | `cpu_layer_norm` | (dlight's) |
| `rope.py` | 2D RoPE fused with the q/k/v split | `rope_qkv` | the same |
| `posemb.py` | bilinear resize of the position embedding | `resize_posemb` | the same |
| `patches.py` | the patch gather (patch embedding as matmul) | `image_patches` | the same |
| `common.py` | constants and a vectorisable exp the kernels share | | |
| `schedule_cpu.py`, `schedule_gpu.py` | schedules of the kernels TVM legalizes | | |

Which kernel a graph uses is the business of `pe_port.backends`: a new target gets a `Backend`
there, and its kernels here, next to the other targets' kernels of the same op. Every
`make_*_kernel` is memoised: a model calls `dense` dozens of times with a handful of shapes, and
parsing TVMScript is the slow part of building the graph.
"""

from pe_port.kernels.posemb import resize_posemb
from pe_port.kernels.rope import make_rope_qkv_kernel, rope_qkv

__all__ = ["make_rope_qkv_kernel", "resize_posemb", "rope_qkv"]
