"""A piece of a real vLLM 0.26 graph: the AOT forward graph vLLM's piecewise backend handed our
compiler for the middle piece of a 2-layer Llama (hidden 1024, 16/4 heads, head 64, intermediate
2816) on an H200, copied from ``TORCH_LOGS=aot_graphs`` (device tensors moved to the CPU, type
annotations dropped). o_proj -> fused add+RMSNorm -> gate_up -> SiLU-and-mul -> down -> fused
add+RMSNorm -> qkv -> RoPE -> the attention's views. Regenerate: ``TORCH_LOGS=aot_graphs`` on a
vLLM run with ``{"backend": "tri_inductor"}``."""
import torch
from torch import device  # noqa: F401  (the graph code names devices)


class Piece(torch.nn.Module):
    def forward(self, arg0_1, arg1_1, arg2_1, arg3_1, arg4_1, arg5_1, arg6_1, arg7_1, arg8_1, arg9_1, arg10_1):
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:582 in forward, code: return output.view(-1, hidden_size)
        view = torch.ops.aten.view.default(arg0_1, [-1, 1024]);  arg0_1 = None
        # File: /tmp/site/vllm/model_executor/parameter.py:126 in __torch_function__, code: return super().__torch_function__(func, types, args, kwargs)
        permute = torch.ops.aten.permute.default(arg2_1, [1, 0]);  arg2_1 = None
        mm = torch.ops.aten.mm.default(view, permute);  view = permute = None
        # File: /tmp/site/vllm/model_executor/layers/layernorm.py:91 in forward_native, code: self.weight.data if self.pass_weight_add else None,
        alias = torch.ops.aten.alias.default(arg3_1);  arg3_1 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:49 in fused_add_rms_norm, code: x = x.to(torch.float32)
        convert_element_type_2 = torch.ops.prims.convert_element_type.default(mm, torch.float32);  mm = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:50 in fused_add_rms_norm, code: x = x + x_residual.to(torch.float32)
        convert_element_type_3 = torch.ops.prims.convert_element_type.default(arg4_1, torch.float32);  arg4_1 = None
        add_12 = torch.ops.aten.add.Tensor(convert_element_type_2, convert_element_type_3);  convert_element_type_2 = convert_element_type_3 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:51 in fused_add_rms_norm, code: x_residual = x.to(orig_dtype)
        convert_element_type_4 = torch.ops.prims.convert_element_type.default(add_12, torch.bfloat16)
        # File: /tmp/site/vllm/ir/ops/layernorm.py:54 in fused_add_rms_norm, code: variance = x_var.pow(2).mean(dim=-1, keepdim=True)
        pow_1 = torch.ops.aten.pow.Tensor_Scalar(add_12, 2)
        mean = torch.ops.aten.mean.dim(pow_1, [-1], True);  pow_1 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:55 in fused_add_rms_norm, code: x = x * torch.rsqrt(variance + epsilon)
        add_25 = torch.ops.aten.add.Tensor(mean, 1e-05);  mean = None
        rsqrt = torch.ops.aten.rsqrt.default(add_25);  add_25 = None
        mul_17 = torch.ops.aten.mul.Tensor(add_12, rsqrt);  add_12 = rsqrt = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:57 in fused_add_rms_norm, code: x = x.to(weight.dtype) * weight
        convert_element_type_5 = torch.ops.prims.convert_element_type.default(mul_17, torch.bfloat16);  mul_17 = None
        mul_22 = torch.ops.aten.mul.Tensor(convert_element_type_5, alias);  convert_element_type_5 = alias = None
        # File: /tmp/site/vllm/model_executor/parameter.py:126 in __torch_function__, code: return super().__torch_function__(func, types, args, kwargs)
        permute_1 = torch.ops.aten.permute.default(arg5_1, [1, 0]);  arg5_1 = None
        mm_1 = torch.ops.aten.mm.default(mul_22, permute_1);  mul_22 = permute_1 = None
        # File: /tmp/site/vllm/model_executor/layers/activation.py:143 in forward_native, code: return F.silu(x[..., :d]) * x[..., d:]
        slice_1 = torch.ops.aten.slice.Tensor(mm_1, 1, 0, 2816)
        convert_element_type_8 = torch.ops.prims.convert_element_type.default(slice_1, torch.float32);  slice_1 = None
        neg = torch.ops.aten.neg.default(convert_element_type_8)
        exp = torch.ops.aten.exp.default(neg);  neg = None
        add_47 = torch.ops.aten.add.Tensor(exp, 1);  exp = None
        div = torch.ops.aten.div.Tensor(convert_element_type_8, add_47);  convert_element_type_8 = add_47 = None
        convert_element_type_9 = torch.ops.prims.convert_element_type.default(div, torch.bfloat16);  div = None
        slice_2 = torch.ops.aten.slice.Tensor(mm_1, 1, 2816, 9223372036854775807);  mm_1 = None
        mul_33 = torch.ops.aten.mul.Tensor(convert_element_type_9, slice_2);  convert_element_type_9 = slice_2 = None
        # File: /tmp/site/vllm/model_executor/parameter.py:126 in __torch_function__, code: return super().__torch_function__(func, types, args, kwargs)
        permute_2 = torch.ops.aten.permute.default(arg6_1, [1, 0]);  arg6_1 = None
        mm_2 = torch.ops.aten.mm.default(mul_33, permute_2);  mul_33 = permute_2 = None
        # File: /tmp/site/vllm/model_executor/layers/layernorm.py:91 in forward_native, code: self.weight.data if self.pass_weight_add else None,
        alias_1 = torch.ops.aten.alias.default(arg7_1);  arg7_1 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:49 in fused_add_rms_norm, code: x = x.to(torch.float32)
        convert_element_type_12 = torch.ops.prims.convert_element_type.default(mm_2, torch.float32);  mm_2 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:50 in fused_add_rms_norm, code: x = x + x_residual.to(torch.float32)
        convert_element_type_13 = torch.ops.prims.convert_element_type.default(convert_element_type_4, torch.float32);  convert_element_type_4 = None
        add_66 = torch.ops.aten.add.Tensor(convert_element_type_12, convert_element_type_13);  convert_element_type_12 = convert_element_type_13 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:51 in fused_add_rms_norm, code: x_residual = x.to(orig_dtype)
        convert_element_type_14 = torch.ops.prims.convert_element_type.default(add_66, torch.bfloat16)
        # File: /tmp/site/vllm/ir/ops/layernorm.py:54 in fused_add_rms_norm, code: variance = x_var.pow(2).mean(dim=-1, keepdim=True)
        pow_2 = torch.ops.aten.pow.Tensor_Scalar(add_66, 2)
        mean_1 = torch.ops.aten.mean.dim(pow_2, [-1], True);  pow_2 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:55 in fused_add_rms_norm, code: x = x * torch.rsqrt(variance + epsilon)
        add_79 = torch.ops.aten.add.Tensor(mean_1, 1e-05);  mean_1 = None
        rsqrt_1 = torch.ops.aten.rsqrt.default(add_79);  add_79 = None
        mul_51 = torch.ops.aten.mul.Tensor(add_66, rsqrt_1);  add_66 = rsqrt_1 = None
        # File: /tmp/site/vllm/ir/ops/layernorm.py:57 in fused_add_rms_norm, code: x = x.to(weight.dtype) * weight
        convert_element_type_15 = torch.ops.prims.convert_element_type.default(mul_51, torch.bfloat16);  mul_51 = None
        mul_56 = torch.ops.aten.mul.Tensor(convert_element_type_15, alias_1);  convert_element_type_15 = alias_1 = None
        # File: /tmp/site/vllm/model_executor/parameter.py:126 in __torch_function__, code: return super().__torch_function__(func, types, args, kwargs)
        permute_3 = torch.ops.aten.permute.default(arg8_1, [1, 0]);  arg8_1 = None
        mm_3 = torch.ops.aten.mm.default(mul_56, permute_3);  mul_56 = permute_3 = None
        # File: /tmp/site/vllm/model_executor/models/llama.py:227 in forward, code: q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        split_with_sizes = torch.ops.aten.split_with_sizes.default(mm_3, [1024, 256, 256], -1);  mm_3 = None
        getitem = split_with_sizes[0]
        getitem_1 = split_with_sizes[1]
        getitem_2 = split_with_sizes[2];  split_with_sizes = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:173 in forward_static, code: cos_sin = cos_sin_cache.index_select(0, positions)
        index = torch.ops.aten.index.Tensor(arg10_1, [arg9_1]);  arg10_1 = arg9_1 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:174 in forward_static, code: cos, sin = cos_sin.chunk(2, dim=-1)
        split = torch.ops.aten.split.Tensor(index, 32, -1);  index = None
        getitem_3 = split[0]
        getitem_4 = split[1];  split = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:177 in forward_static, code: query = query.view(num_tokens, -1, head_size)
        view_1 = torch.ops.aten.view.default(getitem, [arg1_1, -1, 64]);  getitem = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:178 in forward_static, code: query_rot = query[..., :rotary_dim]
        alias_2 = torch.ops.aten.alias.default(view_1);  view_1 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:166 in forward_static, code: cos = cos.unsqueeze(-2).to(x.dtype)
        unsqueeze = torch.ops.aten.unsqueeze.default(getitem_3, -2)
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:167 in forward_static, code: sin = sin.unsqueeze(-2).to(x.dtype)
        unsqueeze_1 = torch.ops.aten.unsqueeze.default(getitem_4, -2)
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:170 in forward_static, code: x1, x2 = torch.chunk(x, 2, dim=-1)
        split_1 = torch.ops.aten.split.Tensor(alias_2, 32, -1);  alias_2 = None
        getitem_5 = split_1[0]
        getitem_6 = split_1[1];  split_1 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:175 in forward_static, code: o1 = x1 * cos - x2 * sin
        mul_88 = torch.ops.aten.mul.Tensor(getitem_5, unsqueeze)
        mul_91 = torch.ops.aten.mul.Tensor(getitem_6, unsqueeze_1)
        sub_46 = torch.ops.aten.sub.Tensor(mul_88, mul_91);  mul_88 = mul_91 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:176 in forward_static, code: o2 = x2 * cos + x1 * sin
        mul_96 = torch.ops.aten.mul.Tensor(getitem_6, unsqueeze);  getitem_6 = unsqueeze = None
        mul_99 = torch.ops.aten.mul.Tensor(getitem_5, unsqueeze_1);  getitem_5 = unsqueeze_1 = None
        add_162 = torch.ops.aten.add.Tensor(mul_96, mul_99);  mul_96 = mul_99 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:179 in forward_static, code: output = torch.cat((o1, o2), dim=-1)
        cat = torch.ops.aten.cat.default([sub_46, add_162], -1);  sub_46 = add_162 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:186 in forward_static, code: query = torch.cat((query_rot, query_pass), dim=-1).reshape(query_shape)
        clone = torch.ops.aten.clone.default(cat);  cat = None
        view_2 = torch.ops.aten.view.default(clone, [arg1_1, 1024]);  clone = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:191 in forward_static, code: key = key.view(num_tokens, -1, head_size)
        view_3 = torch.ops.aten.view.default(getitem_1, [arg1_1, -1, 64]);  getitem_1 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:192 in forward_static, code: key_rot = key[..., :rotary_dim]
        alias_3 = torch.ops.aten.alias.default(view_3);  view_3 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:166 in forward_static, code: cos = cos.unsqueeze(-2).to(x.dtype)
        unsqueeze_2 = torch.ops.aten.unsqueeze.default(getitem_3, -2);  getitem_3 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:167 in forward_static, code: sin = sin.unsqueeze(-2).to(x.dtype)
        unsqueeze_3 = torch.ops.aten.unsqueeze.default(getitem_4, -2);  getitem_4 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:170 in forward_static, code: x1, x2 = torch.chunk(x, 2, dim=-1)
        split_2 = torch.ops.aten.split.Tensor(alias_3, 32, -1);  alias_3 = None
        getitem_7 = split_2[0]
        getitem_8 = split_2[1];  split_2 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:175 in forward_static, code: o1 = x1 * cos - x2 * sin
        mul_127 = torch.ops.aten.mul.Tensor(getitem_7, unsqueeze_2)
        mul_130 = torch.ops.aten.mul.Tensor(getitem_8, unsqueeze_3)
        sub_63 = torch.ops.aten.sub.Tensor(mul_127, mul_130);  mul_127 = mul_130 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:176 in forward_static, code: o2 = x2 * cos + x1 * sin
        mul_135 = torch.ops.aten.mul.Tensor(getitem_8, unsqueeze_2);  getitem_8 = unsqueeze_2 = None
        mul_138 = torch.ops.aten.mul.Tensor(getitem_7, unsqueeze_3);  getitem_7 = unsqueeze_3 = None
        add_224 = torch.ops.aten.add.Tensor(mul_135, mul_138);  mul_135 = mul_138 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/common.py:179 in forward_static, code: output = torch.cat((o1, o2), dim=-1)
        cat_1 = torch.ops.aten.cat.default([sub_63, add_224], -1);  sub_63 = add_224 = None
        # File: /tmp/site/vllm/model_executor/layers/rotary_embedding/base.py:200 in forward_static, code: key = torch.cat((key_rot, key_pass), dim=-1).reshape(key_shape)
        clone_1 = torch.ops.aten.clone.default(cat_1);  cat_1 = None
        view_4 = torch.ops.aten.view.default(clone_1, [arg1_1, 256]);  clone_1 = None
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:531 in forward, code: output = torch.empty(output_shape, dtype=output_dtype, device=query.device)
        empty = torch.ops.aten.empty.memory_format([arg1_1, 1024], dtype = torch.bfloat16, device = device(type='cpu'), pin_memory = False);  arg1_1 = None
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:536 in forward, code: query = query.view(-1, self.num_heads, self.head_size)
        view_5 = torch.ops.aten.view.default(view_2, [-1, 16, 64]);  view_2 = None
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:537 in forward, code: output = output.view(-1, self.num_heads, self.head_size_v)
        view_6 = torch.ops.aten.view.default(empty, [-1, 16, 64]);  empty = None
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:539 in forward, code: key = key.view(-1, self.num_kv_heads, self.head_size)
        view_7 = torch.ops.aten.view.default(view_4, [-1, 4, 64]);  view_4 = None
        # File: /tmp/site/vllm/model_executor/layers/attention/attention.py:541 in forward, code: value = value.view(-1, self.num_kv_heads, self.head_size_v)
        view_8 = torch.ops.aten.view.default(getitem_2, [-1, 4, 64]);  getitem_2 = None
        return (view_7, view_8, view_5, view_6, convert_element_type_14)
