#!/usr/bin/env python3
"""Independent PyTorch reference of a LLaMA-family causal LM with a PEFT LoRA adapter.

Written after transformers' modeling_llama.py (eager attention) and peft's lora.Linear, without either package:
reads a Hugging Face model folder (config.json + model.safetensors or shards) and a PEFT adapter folder, and prints
JSON with, for each sample, the logits at the response positions, the loss (mean cross-entropy of the response
tokens) and the gradient of that loss with respect to every LoRA tensor (by PEFT key) — one backward per sample.

usage: llama_reference.py MODEL_DIR ADAPTER_DIR SAMPLES_JSONL [float64|float32]
"""
import json, math, os, struct, sys
import numpy as np
import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif dt == "F64":
            a = np.frombuffer(raw, dtype="<f8").copy()
        else:
            raise ValueError(dt)
        out[name] = a.reshape(info["shape"])
    return out


def load_model(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    index = os.path.join(folder, "model.safetensors.index.json")
    weights = {}
    if os.path.exists(index):
        for file in sorted(set(json.load(open(index))["weight_map"].values())):
            weights.update(read_safetensors(os.path.join(folder, file)))
    else:
        weights = read_safetensors(os.path.join(folder, "model.safetensors"))
    return cfg, weights


class Reference:
    def __init__(self, cfg, weights, adapter_cfg, adapter, dtype):
        self.cfg, self.dtype = cfg, dtype
        self.w = {k: torch.tensor(v, dtype=dtype) for k, v in weights.items()}
        if cfg.get("tie_word_embeddings", False):
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        self.lora = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in adapter.items()}
        r, alpha = adapter_cfg["r"], adapter_cfg["lora_alpha"]
        self.scaling = alpha / math.sqrt(r) if adapter_cfg.get("use_rslora", False) else alpha / r
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_heads)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads
        self.eps = cfg["rms_norm_eps"]
        base = cfg.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (base ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))

    def linear(self, name, x):
        y = x @ self.w[name + ".weight"].T
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        a = self.lora.get("base_model.model." + name + ".lora_A.weight")
        if a is not None:
            b = self.lora["base_model.model." + name + ".lora_B.weight"]
            y = y + (x @ a.T) @ b.T * self.scaling
        return y

    def rms(self, x, weight):
        input_dtype = x.dtype
        h = x.to(torch.float32) if input_dtype != torch.float64 else x
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        return weight * h.to(input_dtype)

    @staticmethod
    def rotate_half(x):
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, ids):
        T = ids.shape[0]
        h = self.w["model.embed_tokens.weight"][ids].unsqueeze(0)
        pos = torch.arange(T).float()
        freqs = torch.outer(pos, self.inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        mask = torch.full((T, T), float("-inf"), dtype=self.dtype).triu(1)
        groups = self.n_heads // self.n_kv
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            residual = h
            x = self.rms(h, self.w[p + "input_layernorm.weight"])
            q = self.linear(p + "self_attn.q_proj", x).view(1, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = self.linear(p + "self_attn.k_proj", x).view(1, T, self.n_kv, self.head_dim).transpose(1, 2)
            v = self.linear(p + "self_attn.v_proj", x).view(1, T, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + mask
            attn = torch.softmax(scores, dim=-1, dtype=torch.float32 if self.dtype != torch.float64 else torch.float64).to(self.dtype)
            out = (attn @ v).transpose(1, 2).reshape(1, T, -1)
            h = residual + self.linear(p + "self_attn.o_proj", out)
            residual = h
            x = self.rms(h, self.w[p + "post_attention_layernorm.weight"])
            g = self.linear(p + "mlp.gate_proj", x)
            u = self.linear(p + "mlp.up_proj", x)
            h = residual + self.linear(p + "mlp.down_proj", torch.nn.functional.silu(g) * u)
        h = self.rms(h, self.w["model.norm.weight"])
        return (h @ self.w["lm_head.weight"].T)[0]


def main():
    model_dir, adapter_dir, samples_path = sys.argv[1:4]
    dtype = torch.float64 if (len(sys.argv) < 5 or sys.argv[4] == "float64") else torch.float32
    cfg, weights = load_model(model_dir)
    adapter_cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    adapter = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    ref = Reference(cfg, weights, adapter_cfg, adapter, dtype)
    results = []
    for line in open(samples_path):
        if not line.strip():
            continue
        s = json.loads(line)
        prompt, response = s["promptIds"], s["responseIds"]
        ids = torch.tensor(prompt + response, dtype=torch.long)
        logits = ref.forward(ids)
        p = len(prompt)
        sel = logits[p - 1: p - 1 + len(response)]
        loss = torch.nn.functional.cross_entropy(sel.to(torch.float64 if dtype == torch.float64 else torch.float32),
                                                 torch.tensor(response), reduction="mean")
        keys = sorted(ref.lora)
        grads = torch.autograd.grad(loss, [ref.lora[k] for k in keys])
        results.append({
            "id": s["id"],
            "loss": loss.item(),
            "logits": sel.detach().reshape(-1).tolist(),
            "fullLogits": logits.detach().reshape(-1).tolist(),
            "gradients": {k: g.reshape(-1).tolist() for k, g in zip(keys, grads)},
        })
    json.dump({"torch": torch.__version__, "samples": results}, sys.stdout)


if __name__ == "__main__":
    main()
