using System.Diagnostics;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace EraserWorker.Models;

/// <summary>Settings of <see cref="BaseModelTrainer.Pretrain"/>.</summary>
public sealed record PretrainOptions
{
    public required LlamaConfig Config { get; init; }
    public required string OutputDirectory { get; init; }
    public int Steps { get; init; } = 1000;
    /// <summary>Windows per step.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Tokens per window (the model predicts each token from the ones before it in its window).</summary>
    public int SequenceLength { get; init; } = 128;
    public double LearningRate { get; init; } = 3e-3;
    public int WarmupSteps { get; init; } = 50;
    /// <summary>AdamW's decoupled weight decay on matrices (not on norm weights).</summary>
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Global gradient-norm clip.</summary>
    public double ClipNorm { get; init; } = 1.0;
    public int Seed { get; init; } = 1;
    public string Device { get; init; } = "auto";
}

public sealed record PretrainProgress(int Step, int Steps, double TrainLoss, TimeSpan Elapsed);

public sealed record PretrainResult(long Parameters, long TrainTokens, long ValidationTokens, double InitialValidationLoss,
    double FinalValidationLoss, double Seconds, double TokensPerSecond);

/// <summary>
/// Full-parameter causal-LM pretraining of a small LLaMA from random weights on a token stream: random windows
/// (seeded), next-token cross-entropy, AdamW with linear warm-up then cosine decay to 10 %, gradient clipping. The
/// last 5 % of the stream is held out for validation. Writes a Hugging Face model folder (config.json +
/// model.safetensors, F32); the caller adds the tokenizer.
/// </summary>
public static class BaseModelTrainer
{
    public static PretrainResult Pretrain(PretrainOptions options, IReadOnlyList<int> tokens, IProgress<PretrainProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        var watch = Stopwatch.StartNew();
        int seq = options.SequenceLength;
        int validationStart = (int)(tokens.Count * 0.95);
        if (validationStart < seq + 1 || tokens.Count - validationStart < seq + 1)
            throw new ArgumentException($"The corpus has {tokens.Count} tokens: too few for windows of {seq}.");
        foreach (int t in tokens)
            if ((uint)t >= (uint)options.Config.VocabSize)
                throw new ArgumentException($"Token id {t} is outside the vocabulary ({options.Config.VocabSize}).");

        string initial = options.OutputDirectory + ".init";
        if (Directory.Exists(initial))
            Directory.Delete(initial, true);
        // Small embeddings (logits ≈ 0, initial loss ≈ ln V) and 0.02/√in-scaled projections, as GPT-style inits.
        RandomLlama.WriteModel(initial, options.Config, options.Seed, std: 0.05, embeddingStd: 0.02);
        using var model = LlamaModel.Load(initial, ComputePrecision.Float32, options.Device);
        Directory.Delete(initial, true);

        var stream = torch.tensor(tokens.Select(t => (long)t).ToArray(), ScalarType.Int64).DetachFromDisposeScope();
        using var streamOwner = stream;
        var weights = model.NamedWeights();
        var parameters = weights.Select(w => w.Weight.requires_grad_(true)).ToList();
        var decays = weights.Select(w => w.Weight.dim() == 2).ToList();
        long count = parameters.Sum(p => p.NumberOfElements);
        var m = parameters.Select(p => torch.zeros_like(p).DetachFromDisposeScope()).ToList();
        var v = parameters.Select(p => torch.zeros_like(p).DetachFromDisposeScope()).ToList();
        var random = new Random(options.Seed);
        double initialValidation = Validation(model, stream, validationStart, seq);
        try
        {
            for (int step = 1; step <= options.Steps; step++)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                var starts = Enumerable.Range(0, options.BatchSize).Select(_ => (long)random.Next(0, validationStart - seq - 1)).ToArray();
                var windows = torch.stack(starts.Select(s => stream.narrow(0, s, seq + 1)).ToArray()).to(model.Device);
                var logits = model.Forward(windows.narrow(1, 0, seq), null);
                var loss = F.cross_entropy(logits.reshape(-1, options.Config.VocabSize), windows.narrow(1, 1, seq).reshape(-1));
                var grads = torch.autograd.grad([loss], parameters);
                using (torch.no_grad())
                {
                    double norm = Math.Sqrt(grads.Sum(g => g.Square().sum().item<float>()));
                    double clip = norm > options.ClipNorm ? options.ClipNorm / norm : 1.0;
                    double lr = step <= options.WarmupSteps
                        ? options.LearningRate * step / options.WarmupSteps
                        : options.LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * (step - options.WarmupSteps) / Math.Max(1, options.Steps - options.WarmupSteps))));
                    double c1 = 1 - Math.Pow(0.9, step), c2 = 1 - Math.Pow(0.95, step);
                    for (int i = 0; i < parameters.Count; i++)
                    {
                        var g = grads[i].Times(clip);
                        if (decays[i])
                            parameters[i].MulInPlace(1 - lr * options.WeightDecay);
                        m[i].MulInPlace(0.9).AddInPlace(g, 0.1);
                        v[i].MulInPlace(0.95).AddcmulInPlace(g, g, 0.05);
                        parameters[i].AddcdivInPlace(m[i], v[i].Times(1 / c2).sqrt_().AddInPlace(1e-8), -lr / c1);
                    }
                }
                if (step % 25 == 0 || step == options.Steps)
                    progress?.Report(new PretrainProgress(step, options.Steps, loss.item<float>(), watch.Elapsed));
            }
        }
        finally
        {
            foreach (var t in m.Concat(v))
                t.Dispose();
        }
        foreach (var p in parameters)
            p.requires_grad_(false);
        double finalValidation = Validation(model, stream, validationStart, seq);
        if (Directory.Exists(options.OutputDirectory))
            Directory.Delete(options.OutputDirectory, true);
        model.Save(options.OutputDirectory);
        long trainTokens = (long)options.Steps * options.BatchSize * seq;
        return new PretrainResult(count, validationStart, tokens.Count - validationStart, initialValidation, finalValidation,
            watch.Elapsed.TotalSeconds, trainTokens / watch.Elapsed.TotalSeconds);
    }

    /// <summary>Mean next-token cross-entropy over consecutive windows of the held-out tail.</summary>
    private static double Validation(LlamaModel model, Tensor stream, int start, int seq)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        double sum = 0;
        long n = 0;
        for (long s = start; s + seq + 1 <= stream.shape[0]; s += seq)
        {
            var window = stream.narrow(0, s, seq + 1).unsqueeze(0).to(model.Device);
            var logits = model.Forward(window.narrow(1, 0, seq), null);
            sum += F.cross_entropy(logits.reshape(-1, model.Config.VocabSize), window.narrow(1, 1, seq).reshape(-1), reduction: nn.Reduction.Sum).item<float>();
            n += seq;
        }
        return sum / n;
    }
}
