using EraserWorker.Core.Compute;
using static TorchSharp.torch;

namespace EraserWorker.Models;

/// <summary>
/// LoRA with one θ for the whole batch: θ is a flat [P] tensor in the layout's order; module m uses
/// A = θ[offA : offA + r·in].view(r, in) and B = θ[offB : offB + out·r].view(out, r), and adds
/// <c>scaling · (x Aᵀ) Bᵀ</c> (PEFT's <c>lora_B(lora_A(x)) * scaling</c>, dropout off).
/// Gradients with respect to θ are the flat, cache-ordered gradient.
/// </summary>
public sealed class SharedLora(LoraLayout layout, Tensor theta) : ILoraDelta
{
    public Tensor? Delta(int layer, LoraTarget target, Tensor x)
    {
        var m = layout.Find(layer, target);
        if (m is null)
            return null;
        var a = theta.narrow(0, m.OffsetA, m.CountA).view(m.Rank, m.In);
        var b = theta.narrow(0, m.OffsetB, m.CountB).view(m.Out, m.Rank);
        return x.matmul(a.t()).matmul(b.t()).Times(m.Scaling);
    }
}

/// <summary>
/// LoRA with one copy of θ per batch row: θ is [batch, P] (each row equal to θ₀ as a leaf of its own), so the gradient
/// of Σᵢ ℓᵢ with respect to θ's row i is ∇ℓᵢ — every sample's gradient from one backward pass (samples do not
/// interact in the forward pass). Costs the same matrix products as <see cref="SharedLora"/>, as batched products.
/// </summary>
public sealed class PerSampleLora(LoraLayout layout, Tensor theta) : ILoraDelta
{
    public Tensor? Delta(int layer, LoraTarget target, Tensor x)
    {
        var m = layout.Find(layer, target);
        if (m is null)
            return null;
        long batch = theta.shape[0];
        var a = theta.narrow(1, m.OffsetA, m.CountA).view(batch, m.Rank, m.In);
        var b = theta.narrow(1, m.OffsetB, m.CountB).view(batch, m.Out, m.Rank);
        return x.bmm(a.transpose(1, 2)).bmm(b.transpose(1, 2)).Times(m.Scaling);
    }
}
