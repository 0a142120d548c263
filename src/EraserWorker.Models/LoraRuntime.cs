using System.Diagnostics;
using System.Text;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Models;

/// <summary>Per-sample results of one batch, on the CPU, in the batch's order.</summary>
/// <param name="Gradients">gᵢ = ∇ℓᵢ(θ), [batch, P].</param>
/// <param name="Curvature">cᵢ (sampled-label Fisher factor, see <see cref="LoraRuntime.PerSample"/>), [batch, P], or null.</param>
/// <param name="Losses">ℓᵢ(θ).</param>
public sealed record PerSampleRows(float[] Gradients, float[]? Curvature, double[] Losses, long Parameters)
{
    public ReadOnlySpan<float> Gradient(int row) => Gradients.AsSpan((int)(row * Parameters), (int)Parameters);

    public ReadOnlySpan<float> CurvatureRow(int row) => Curvature is null ? default : Curvature.AsSpan((int)(row * Parameters), (int)Parameters);
}

/// <summary>Where the time of <see cref="LoraRuntime"/> calls went (seconds, cumulative).</summary>
public sealed class RuntimeTimings
{
    public double Forward { get; set; }
    public double GradientBackward { get; set; }
    public double CurvatureBackward { get; set; }
    public double Transfer { get; set; }
    public double HvpForward { get; set; }
    public double HvpBackward { get; set; }

    public RuntimeTimings Clone() => (RuntimeTimings)MemberwiseClone();
}

/// <summary>
/// A LLaMA model with a LoRA layout: losses, per-sample gradients, curvature rows, summed gradients and exact
/// Hessian-vector products of ℓᵢ(θ) = mean cross-entropy of sample i's response tokens, at any θ (flat, in the
/// layout's order — the gradient cache's order). All work runs under one dispose scope per call; inputs are never
/// disposed. Not thread-safe.
/// </summary>
public sealed class LoraRuntime(LlamaModel model, LoraLayout layout)
{
    public LlamaModel Model { get; } = model;

    public LoraLayout Layout { get; } = layout;

    public long ParameterCount => Layout.ParameterCount;

    public RuntimeTimings Timings { get; } = new();

    /// <summary>θ as a tensor of the model's dtype on its device (owned by the caller's dispose scope).</summary>
    public Tensor ThetaTensor(ReadOnlySpan<double> theta)
    {
        if (theta.Length != ParameterCount)
            throw new ArgumentException($"θ has {theta.Length} values; P = {ParameterCount}.", nameof(theta));
        return torch.tensor(theta.ToArray(), ScalarType.Float64, Model.Device).to_type(Model.DType);
    }

    /// <summary>ℓᵢ(θ) of every sample (no gradients).</summary>
    public double[] Losses(IReadOnlyList<TokenizedSample> samples, ReadOnlySpan<double> theta, int batchSize = 16)
    {
        var result = new double[samples.Count];
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var t = ThetaTensor(theta);
        for (int start = 0; start < samples.Count; start += batchSize)
        {
            using var inner = torch.NewDisposeScope();
            var batch = samples.Skip(start).Take(batchSize).ToList();
            var (losses, _, _) = BatchLoss(batch, new SharedLora(Layout, t));
            losses.to_type(ScalarType.Float64).cpu().data<double>().CopyTo(result, start);
        }
        return result;
    }

    /// <summary>Per-sample loss and greedy exact match: the response is what greedy decoding from the prompt produces
    /// iff every response token is the arg-max of the model's prediction given the prompt and the response before it
    /// (teacher forcing is then exactly the greedy path), checked in one forward pass.</summary>
    public (double[] Losses, bool[] ExactMatch, int[] CorrectTokens) Evaluate(IReadOnlyList<TokenizedSample> samples, ReadOnlySpan<double> theta, int batchSize = 16)
    {
        var losses = new double[samples.Count];
        var exact = new bool[samples.Count];
        var correct = new int[samples.Count];
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var t = ThetaTensor(theta);
        for (int start = 0; start < samples.Count; start += batchSize)
        {
            using var inner = torch.NewDisposeScope();
            var batch = samples.Skip(start).Take(batchSize).ToList();
            var (l, logits, b) = BatchLoss(batch, new SharedLora(Layout, t));
            l.to_type(ScalarType.Float64).cpu().data<double>().CopyTo(losses, start);
            var hits = (logits.argmax(-1) == b.Targets).to_type(ScalarType.Int64);
            var perSample = torch.zeros(batch.Count, ScalarType.Int64, Model.Device).IndexAdd(0, b.SampleOf, hits);
            var counts = perSample.cpu().data<long>().ToArray();
            for (int i = 0; i < batch.Count; i++)
            {
                correct[start + i] = (int)counts[i];
                exact[start + i] = counts[i] == batch[i].ResponseIds.Length;
            }
        }
        return (losses, exact, correct);
    }

    /// <summary>
    /// gᵢ = ∇ℓᵢ(θ) for every sample of <paramref name="batch"/> from one forward and one backward pass: θ is expanded
    /// into one leaf copy per sample (<see cref="PerSampleLora"/>). With <paramref name="curvature"/>, also
    /// cᵢ = (1/√Rᵢ) Σₜ ∇ CE(ŷₜ) where ŷₜ ~ softmax(logitsₜ) is sampled from the model's own prediction at each of the
    /// Rᵢ response positions (a second backward through the same graph): E[cᵢcᵢᵀ] = (1/Rᵢ) Σₜ Jₜᵀ(diag pₜ − pₜpₜᵀ)Jₜ,
    /// the Gauss–Newton (= Fisher) matrix of ℓᵢ. The labels are drawn from a generator seeded by
    /// (<paramref name="seed"/>, sample id), so a row does not depend on batching or on resuming.
    /// </summary>
    public PerSampleRows PerSample(IReadOnlyList<TokenizedSample> batch, ReadOnlySpan<double> theta, bool curvature, ulong seed)
    {
        using var scope = torch.NewDisposeScope();
        var watch = Stopwatch.StartNew();
        var t = ThetaTensor(theta);
        var rows = t.unsqueeze(0).expand(batch.Count, ParameterCount).clone().requires_grad_(true);
        var (losses, logits, b) = BatchLoss(batch, new PerSampleLora(Layout, rows));
        var total = losses.sum();
        Timings.Forward += Lap(watch);
        var g = torch.autograd.grad([total], [rows], retain_graph: curvature)[0];
        Timings.GradientBackward += Lap(watch);
        Tensor? c = null;
        if (curvature)
        {
            Tensor sampled;
            using (torch.no_grad())
            {
                var probabilities = logits.detach().softmax(-1);
                var parts = new List<Tensor>();
                long at = 0;
                foreach (var s in batch)
                {
                    using var generator = new torch.Generator(SampleSeed(seed, s.Id), Model.Device);
                    parts.Add(torch.multinomial(probabilities.narrow(0, at, s.ResponseIds.Length), 1, true, generator).squeeze(1));
                    at += s.ResponseIds.Length;
                }
                sampled = torch.cat(parts, 0);
            }
            var logp = logits.log_softmax(-1);
            var tokenLoss = -logp.gather(1, sampled.unsqueeze(1)).squeeze(1);
            var curvatureTotal = (tokenLoss * b.TokenWeight.sqrt()).sum();
            c = torch.autograd.grad([curvatureTotal], [rows])[0];
            Timings.CurvatureBackward += Lap(watch);
        }
        var result = new PerSampleRows(
            g.to_type(ScalarType.Float32).cpu().data<float>().ToArray(),
            c?.to_type(ScalarType.Float32).cpu().data<float>().ToArray(),
            losses.detach().to_type(ScalarType.Float64).cpu().data<double>().ToArray(),
            ParameterCount);
        Timings.Transfer += Lap(watch);
        return result;
    }

    /// <summary>Σᵢ ℓᵢ(θ) and its gradient Σᵢ ∇ℓᵢ(θ) over <paramref name="samples"/> (one shared θ, batched).</summary>
    public (double Loss, double[] Gradient) Gradient(IReadOnlyList<TokenizedSample> samples, ReadOnlySpan<double> theta, int batchSize = 16)
    {
        using var scope = torch.NewDisposeScope();
        var t = ThetaTensor(theta);
        var sum = torch.zeros(ParameterCount, ScalarType.Float64, Model.Device);
        double loss = 0;
        for (int start = 0; start < samples.Count; start += batchSize)
        {
            using var inner = torch.NewDisposeScope();
            var leaf = t.detach().requires_grad_(true);
            var (losses, _, _) = BatchLoss(samples.Skip(start).Take(batchSize).ToList(), new SharedLora(Layout, leaf));
            var total = losses.sum();
            var g = torch.autograd.grad([total], [leaf])[0];
            sum.AddInPlace(g.to_type(ScalarType.Float64));
            loss += total.to_type(ScalarType.Float64).item<double>();
        }
        return (loss, sum.cpu().data<double>().ToArray());
    }

    /// <summary>
    /// The exact Hessian-vector product (∇² Σᵢ ℓᵢ)(θ)·v over <paramref name="samples"/>, by double backward
    /// (Pearlmutter): g = ∇Σℓ with create_graph, then ∇(gᵀv). Batched; accumulated in float64.
    /// </summary>
    public double[] HessianVectorProduct(IReadOnlyList<TokenizedSample> samples, ReadOnlySpan<double> theta, ReadOnlySpan<double> v, int batchSize = 16)
    {
        if (v.Length != ParameterCount)
            throw new ArgumentException($"v has {v.Length} values; P = {ParameterCount}.", nameof(v));
        using var scope = torch.NewDisposeScope();
        var watch = Stopwatch.StartNew();
        var t = ThetaTensor(theta);
        var vt = ThetaTensor(v);
        var sum = torch.zeros(ParameterCount, ScalarType.Float64, Model.Device);
        for (int start = 0; start < samples.Count; start += batchSize)
        {
            using var inner = torch.NewDisposeScope();
            var leaf = t.detach().requires_grad_(true);
            var (losses, _, _) = BatchLoss(samples.Skip(start).Take(batchSize).ToList(), new SharedLora(Layout, leaf));
            var total = losses.sum();
            Timings.HvpForward += Lap(watch);
            // TorchSharp passes retain_graph literally (PyTorch defaults it to create_graph): keep the forward graph for the second pass.
            var g = torch.autograd.grad([total], [leaf], retain_graph: true, create_graph: true)[0];
            var hv = torch.autograd.grad([(g * vt).sum()], [leaf])[0];
            sum.AddInPlace(hv.to_type(ScalarType.Float64));
            Timings.HvpBackward += Lap(watch);
        }
        return sum.cpu().data<double>().ToArray();
    }

    /// <summary>Right-padded inputs and the response positions of a batch (tensors in the current dispose scope).</summary>
    internal sealed record Batch(Tensor InputIds, Tensor Rows, Tensor Targets, Tensor SampleOf, Tensor TokenWeight);

    internal Batch MakeBatch(IReadOnlyList<TokenizedSample> batch)
    {
        if (batch.Count == 0)
            throw new ArgumentException("Empty batch.", nameof(batch));
        int tokens = batch.Max(s => s.InputLength);
        var ids = new long[batch.Count * tokens];
        var rows = new List<long>();
        var targets = new List<long>();
        var sampleOf = new List<long>();
        var weights = new List<double>();
        for (int i = 0; i < batch.Count; i++)
        {
            var s = batch[i];
            int p = s.PromptIds.Length, r = s.ResponseIds.Length;
            for (int k = 0; k < s.InputLength; k++)
                ids[i * tokens + k] = k < p ? s.PromptIds[k] : s.ResponseIds[k - p];
            for (int k = 0; k < r; k++)
            {
                rows.Add((long)i * tokens + p - 1 + k);
                targets.Add(s.ResponseIds[k]);
                sampleOf.Add(i);
                weights.Add(1.0 / r);
            }
        }
        var device = Model.Device;
        return new Batch(
            torch.tensor(ids, [batch.Count, tokens], ScalarType.Int64, device),
            torch.tensor(rows.ToArray(), ScalarType.Int64, device),
            torch.tensor(targets.ToArray(), ScalarType.Int64, device),
            torch.tensor(sampleOf.ToArray(), ScalarType.Int64, device),
            torch.tensor(weights.ToArray(), ScalarType.Float64, device).to_type(Model.DType));
    }

    /// <summary>Per-sample losses [batch] and the logits of the response positions [Σ Rᵢ, vocab]. lm_head runs only on
    /// the positions that predict a response token.</summary>
    internal (Tensor Losses, Tensor Logits, Batch Batch) BatchLoss(IReadOnlyList<TokenizedSample> batch, ILoraDelta lora)
    {
        var b = MakeBatch(batch);
        var hidden = Model.Hidden(b.InputIds, lora);
        var selected = hidden.reshape(-1, hidden.shape[^1]).index_select(0, b.Rows);
        var logits = Model.Logits(selected);
        if (logits.dtype != ScalarType.Float64 && logits.dtype != ScalarType.Float32)
            logits = logits.to_type(ScalarType.Float32);
        var logp = logits.log_softmax(-1);
        var tokenLoss = -logp.gather(1, b.Targets.unsqueeze(1)).squeeze(1);
        var losses = torch.zeros(batch.Count, logits.dtype, Model.Device).IndexAdd(0, b.SampleOf, tokenLoss * b.TokenWeight.to_type(logits.dtype));
        return (losses, logits, b);
    }

    /// <summary>A stable 64-bit seed for a sample's label draws: FNV-1a of the UTF-8 id, mixed with the run's seed.</summary>
    public static ulong SampleSeed(ulong seed, string id)
    {
        ulong h = 14695981039346656037UL ^ (seed * 0x9E3779B97F4A7C15UL);
        foreach (byte x in Encoding.UTF8.GetBytes(id))
        {
            h ^= x;
            h *= 1099511628211UL;
        }
        // splitmix64 finaliser
        h ^= h >> 30;
        h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 27;
        h *= 0x94D049BB133111EBUL;
        h ^= h >> 31;
        return h & 0x7FFFFFFFFFFFFFFFUL;
    }

    private static double Lap(Stopwatch watch)
    {
        double s = watch.Elapsed.TotalSeconds;
        watch.Restart();
        return s;
    }
}
