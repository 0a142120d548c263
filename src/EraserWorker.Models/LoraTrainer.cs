using EraserWorker.Core.Formats.Adapters;
using System.Diagnostics;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Models;

/// <summary>Settings of <see cref="LoraTrainer.Train"/>.</summary>
public sealed record TrainOptions
{
    public required string ModelDirectory { get; init; }
    public required string DataFile { get; init; }
    public required string OutputDirectory { get; init; }
    /// <summary>Start from this adapter (its configuration and weights); else a new adapter from <see cref="Lora"/>
    /// with PEFT's initialisation (B = 0) seeded by <see cref="Seed"/>.</summary>
    public string? InitialAdapter { get; init; }
    public LoraConfig Lora { get; init; } = new();
    public int Epochs { get; init; } = 3;
    /// <summary>Samples per step (the whole set when ≥ n: full-batch, deterministic descent).</summary>
    public int BatchSize { get; init; } = 8;
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>constant, linear (to 0 over all steps, the transformers Trainer default) or cosine (to 0).</summary>
    public string Schedule { get; init; } = "linear";
    /// <summary>AdamW's decoupled weight decay (θ ← θ − lr·wd·θ each step).</summary>
    public double WeightDecay { get; init; }
    /// <summary>L2 in the objective, SPEC §1's sum convention: each step descends (1/n)[Σᵢ ℓᵢ + (l2/2)‖θ‖²] — pass the
    /// same value to <c>eraser cache build --l2</c> so the cache describes the objective the adapter minimises.</summary>
    public double L2 { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    public int Seed { get; init; } = 1;
    public string Device { get; init; } = "auto";
    public ComputePrecision Precision { get; init; } = ComputePrecision.Float32;
    /// <summary>Leave out these sample ids (a retraining baseline without them).</summary>
    public IReadOnlyCollection<string> Exclude { get; init; } = [];

    /// <summary>The schedules <see cref="Schedule"/> accepts.</summary>
    public static IReadOnlyList<string> Schedules { get; } = ["constant", "linear", "cosine"];

    /// <summary>Every out-of-range setting as a sentence naming it as the caller does (<paramref name="nameOf"/> maps the
    /// property name, e.g. to <c>--epochs</c>); empty when the options are usable. Checked before any file is read.</summary>
    public IReadOnlyList<string> Problems(Func<string, string>? nameOf = null)
    {
        nameOf ??= name => name;
        var problems = new List<string>();
        void Require(bool ok, string setting, string rule, object value)
        {
            if (!ok)
                problems.Add($"{nameOf(setting)} must be {rule} (got {Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture)}).");
        }
        Require(Epochs >= 1, nameof(Epochs), "at least 1", Epochs);
        Require(BatchSize >= 1, nameof(BatchSize), "at least 1", BatchSize);
        Require(double.IsFinite(LearningRate) && LearningRate > 0, nameof(LearningRate), "a finite number > 0", LearningRate);
        Require(Schedules.Contains(Schedule), nameof(Schedule), string.Join(", ", Schedules), Schedule);
        Require(double.IsFinite(WeightDecay) && WeightDecay >= 0, nameof(WeightDecay), "a finite number ≥ 0", WeightDecay);
        Require(double.IsFinite(L2) && L2 >= 0, nameof(L2), "a finite number ≥ 0", L2);
        if (InitialAdapter is null)
        {
            Require(Lora.R >= 1, "Lora.R", "at least 1", Lora.R);
            Require(double.IsFinite(Lora.LoraAlpha) && Lora.LoraAlpha > 0, "Lora.LoraAlpha", "a finite number > 0", Lora.LoraAlpha);
        }
        problems.AddRange(new ComputeOptions { Device = Device, Precision = Precision }.Problems(name => nameOf(name)));
        return problems;
    }
}

public sealed record TrainEpoch(int Epoch, double MeanLoss, double Seconds);

public sealed record TrainResult(string OutputDirectory, int Samples, long Parameters, IReadOnlyList<TrainEpoch> Epochs,
    double InitialMeanLoss, double FinalMeanLoss, double FinalGradientNorm, double Seconds);

/// <summary>
/// LoRA fine-tuning with AdamW (PyTorch's update: decoupled weight decay, bias-corrected moments), seeded: the adapter
/// initialisation and the per-epoch shuffles depend only on the seed. Dropout is off. Writes a PEFT adapter folder.
/// </summary>
public static class LoraTrainer
{
    public static TrainResult Train(TrainOptions options, IProgress<TrainEpoch>? progress = null, CancellationToken cancellation = default)
    {
        var watch = Stopwatch.StartNew();
        if (options.Problems() is { Count: > 0 } problems)
            throw new ArgumentException(string.Join(" ", problems));
        PeftAdapter.CheckWritable(options.OutputDirectory);
        var config = LlamaConfig.Load(options.ModelDirectory);
        LoraLayout layout;
        double[] theta;
        if (options.InitialAdapter is not null)
            (layout, theta) = LoraAdapterFiles.Read(options.InitialAdapter, config);
        else
        {
            layout = new LoraLayout(config, options.Lora);
            theta = LoraAdapterFiles.Initialise(layout, options.Seed);
        }
        var tokenizer = ModelTokenizer.TryLoad(options.ModelDirectory, config);
        var all = TrainingData.Load(options.DataFile, config.VocabSize, tokenizer);
        var exclude = options.Exclude.ToHashSet(StringComparer.Ordinal);
        foreach (var id in exclude)
            if (!all.Any(s => s.Id == id))
                throw new ArgumentException($"Sample '{id}' (to exclude) is not in the data.");
        var samples = all.Where(s => !exclude.Contains(s.Id)).ToList();
        if (samples.Count == 0)
            throw new ArgumentException("No samples left to train on.");

        using var model = LlamaModel.Load(options.ModelDirectory, options.Precision, options.Device);
        var runtime = new LoraRuntime(model, layout);
        int n = samples.Count;
        double initial = runtime.Losses(samples, theta).Average();
        var epochs = new List<TrainEpoch>();
        var random = new Random(options.Seed);
        long totalSteps = (long)options.Epochs * ((n + options.BatchSize - 1) / options.BatchSize);
        if (options.Schedule is not ("constant" or "linear" or "cosine"))
            throw new ArgumentException($"Unknown learning-rate schedule '{options.Schedule}' (constant, linear, cosine).");
        using (var scope = torch.NewDisposeScope())
        {
            var t = runtime.ThetaTensor(theta);
            var m = torch.zeros_like(t);
            var v = torch.zeros_like(t);
            long step = 0;
            for (int epoch = 1; epoch <= options.Epochs; epoch++)
            {
                var epochWatch = Stopwatch.StartNew();
                var order = Enumerable.Range(0, n).ToArray();
                random.Shuffle(order);
                double lossSum = 0;
                for (int start = 0; start < n; start += options.BatchSize)
                {
                    cancellation.ThrowIfCancellationRequested();
                    using var inner = torch.NewDisposeScope();
                    var batch = order.Skip(start).Take(options.BatchSize).Select(i => samples[i]).ToList();
                    var leaf = t.detach().requires_grad_(true);
                    var (losses, _, _) = runtime.BatchLoss(batch, new SharedLora(layout, leaf));
                    var objective = losses.sum().Times(1.0 / batch.Count);
                    var g = torch.autograd.grad([objective], [leaf])[0];
                    lossSum += losses.sum().to_type(ScalarType.Float64).item<double>();
                    using (torch.no_grad())
                    {
                        if (options.L2 > 0)
                            g = g.Plus(t.Times(options.L2 / n));
                        double lr = options.Schedule switch
                        {
                            "linear" => options.LearningRate * (1 - (double)step / totalSteps),
                            "cosine" => options.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * step / totalSteps)),
                            _ => options.LearningRate,
                        };
                        step++;
                        t.MulInPlace(1 - lr * options.WeightDecay);
                        m.MulInPlace(options.Beta1).AddInPlace(g, 1 - options.Beta1);
                        v.MulInPlace(options.Beta2).AddcmulInPlace(g, g, 1 - options.Beta2);
                        double c1 = 1 - Math.Pow(options.Beta1, step), c2 = 1 - Math.Pow(options.Beta2, step);
                        var denominator = v.Times(1 / c2).sqrt_().AddInPlace(options.Epsilon);
                        t.AddcdivInPlace(m, denominator, -lr / c1);
                    }
                }
                var e = new TrainEpoch(epoch, lossSum / n, epochWatch.Elapsed.TotalSeconds);
                epochs.Add(e);
                progress?.Report(e);
            }
            theta = t.to_type(ScalarType.Float64).cpu().data<double>().ToArray();
        }
        var (sumLoss, gradient) = runtime.Gradient(samples, theta);
        double norm = 0;
        for (int i = 0; i < gradient.Length; i++)
        {
            double gi = gradient[i] + options.L2 * theta[i];
            norm += gi * gi;
        }
        var storeLayout = layout;
        if (options.InitialAdapter is null && options.Lora.BaseModelNameOrPath is null)
            storeLayout = new LoraLayout(config, options.Lora with { BaseModelNameOrPath = Path.GetFileName(Path.GetFullPath(options.ModelDirectory).TrimEnd('/')) });
        LoraAdapterFiles.Write(options.OutputDirectory, storeLayout, theta);
        return new TrainResult(Path.GetFullPath(options.OutputDirectory), n, layout.ParameterCount, epochs, initial, sumLoss / n,
            Math.Sqrt(norm), watch.Elapsed.TotalSeconds);
    }
}
