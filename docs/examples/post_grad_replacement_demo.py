import torch, functools, triton, triton.language as tl
import torch._inductor.config as ic
from torch._inductor.pattern_matcher import PatternMatcherPass, register_replacement, fwd_only
from tri_inductor.patterns._trace import trace_replacement
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.library import triton_op
from tri_inductor.patterns._launch import launch
from tri_inductor.testing.codegen_only import fake_sm90, fake_cuda_inputs
from torch._inductor.compile_fx import compile_fx
from torch._inductor.graph import GraphLowering
codes=[]
GraphLowering.save_output_code = staticmethod(lambda code: codes.append(code))

@triton.jit
def silu_mul_kernel(x_ptr, out_ptr, d, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK); m = offs < d
    a = tl.load(x_ptr + row * 2 * d + offs, mask=m).to(tl.float32)
    b = tl.load(x_ptr + row * 2 * d + d + offs, mask=m).to(tl.float32)
    tl.store(out_ptr + row * d + offs, (a * tl.sigmoid(a) * b).to(out_ptr.dtype.element_ty), mask=m)

@triton_op("tri_test::silu_and_mul", mutates_args={})
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    out = x.new_empty(x.shape[:-1] + (d,))
    launch(silu_mul_kernel, (x.numel() // (2 * d),), x, out, d, BLOCK=triton.next_power_of_2(d))
    return out

def pattern(x):
    d = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :d]) * x[..., d:]
def replacement(x):
    return torch.ops.tri_test.silu_and_mul(x)

pm = PatternMatcherPass()
class P(CustomGraphPass):
    def __call__(self, g): print("matched", pm.apply(g))
    def uuid(self): return "x"
with fake_sm90():
    # trace on cpu example
    ex = torch.empty(4, 64, dtype=torch.bfloat16)
    register_replacement(pattern, replacement, [ex], trace_replacement, pm)
    def f(x):
        return pattern(x) + 1
    cap={}
    def be(gm, inputs): cap['gm']=gm; cap['in']=inputs; return gm.forward
torch.compile(f, backend=be)(torch.randn(8, 64, dtype=torch.bfloat16))
gm = cap['gm']
print(gm.code)
with fake_sm90():
    fin, fm = fake_cuda_inputs(cap['in'])
    with ic.patch(post_grad_custom_post_pass=P(), force_disable_caches=True):
        compile_fx(gm, fin)
print(codes[-1][:6000])
