using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Models;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser bench model</c>: cache-building throughput, exact HVP cost and memory on a random LLaMA.</summary>
public static class ModelBenchCommand
{
    /// <summary>Adds <c>model</c> under the <c>bench</c> command (creating <c>bench</c> if it is not there).</summary>
    public static void AddTo(RootCommand root)
    {
        var bench = root.Subcommands.FirstOrDefault(c => c.Name == "bench");
        if (bench is null)
            root.Subcommands.Add(bench = new Command("bench", "Benchmarks that print figures."));
        bench.Subcommands.Add(Create());
    }

    public sealed record Settings(int Layers, int Hidden, int Heads, int KvHeads, int Intermediate, int Vocab, int Rank, string Targets,
        int Samples, int PromptTokens, int ResponseTokens, int BatchSize, bool Curvature, int HvpSamples, int BaselineSamples,
        ComputePrecision Precision, string Device, string Directory);

    public sealed record Report(Settings Settings, long Parameters, long ModelParameters, double BuildSeconds, double ComputeSeconds,
        double SamplesPerSecond, double InputTokensPerSecond, double ResponseTokensPerSecond, RuntimeTimings Timings,
        double BaselineSamplesPerSecond, double HvpSecondsPerActiveSample, double HvpForwardShare, long PeakMemoryBytes, long ModelBytes,
        long CacheBytes, string Device, int Threads);

    private static Command Create()
    {
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 4, Description = "Decoder layers." };
        var hidden = new Option<int>("--hidden") { DefaultValueFactory = _ => 256, Description = "hidden_size." };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 8, Description = "Attention heads." };
        var kvHeads = new Option<int>("--kv-heads") { DefaultValueFactory = _ => 4, Description = "Key/value heads (GQA)." };
        var intermediate = new Option<int>("--intermediate") { DefaultValueFactory = _ => 688, Description = "intermediate_size." };
        var vocab = new Option<int>("--vocab") { DefaultValueFactory = _ => 4096, Description = "vocab_size." };
        var rank = new Option<int>("--rank") { DefaultValueFactory = _ => 8, Description = "LoRA rank." };
        var targets = new Option<string>("--target-modules") { DefaultValueFactory = _ => "all-linear", Description = "LoRA targets (comma-separated or all-linear)." };
        var samples = new Option<int>("--samples") { DefaultValueFactory = _ => 128, Description = "Training samples in the cache." };
        var prompt = new Option<int>("--prompt-tokens") { DefaultValueFactory = _ => 48, Description = "Prompt length." };
        var response = new Option<int>("--response-tokens") { DefaultValueFactory = _ => 16, Description = "Response length." };
        var batch = new Option<int>("--batch-size") { DefaultValueFactory = _ => 16, Description = "Samples per pass." };
        var noCurvature = new Option<bool>("--no-curvature") { Description = "Gradients only." };
        var hvp = new Option<int>("--hvp-samples") { DefaultValueFactory = _ => 32, Description = "Active samples of the timed exact HVP." };
        var baseline = new Option<int>("--baseline-samples") { DefaultValueFactory = _ => 16, Description = "Samples of the one-backward-per-sample baseline (0: skip)." };
        var precision = new Option<ComputePrecision>("--precision") { Description = "Float32 (default) or Float64." };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu", Description = "auto | cpu | cuda | cuda:N" };
        var directory = new Option<string>("--dir") { DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "eraser-bench-model"), Description = "Work folder (emptied first)." };
        var json = new Option<bool>("--json") { Description = "Print the figures as JSON." };
        var command = new Command("model", "Gradient-cache throughput (samples/s, tokens/s), exact HVP time per active sample, peak memory and where the time goes, on a random LLaMA.")
        {
            layers, hidden, heads, kvHeads, intermediate, vocab, rank, targets, samples, prompt, response, batch, noCurvature, hvp, baseline, precision, device, directory, json,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var settings = new Settings(parse.GetValue(layers), parse.GetValue(hidden), parse.GetValue(heads), parse.GetValue(kvHeads),
                parse.GetValue(intermediate), parse.GetValue(vocab), parse.GetValue(rank), parse.GetValue(targets)!, parse.GetValue(samples),
                parse.GetValue(prompt), parse.GetValue(response), parse.GetValue(batch), !parse.GetValue(noCurvature), parse.GetValue(hvp),
                parse.GetValue(baseline), parse.GetValue(precision), parse.GetValue(device)!, parse.GetValue(directory)!);
            var report = Run(settings, Console.Error);
            if (parse.GetValue(json))
                Console.Out.WriteLine(JsonSerializer.Serialize(report, CliJson.Options));
            else
                Print(report);
            return 0;
        }));
        return command;
    }

    public static Report Run(Settings s, TextWriter log)
    {
        if (Directory.Exists(s.Directory))
            Directory.Delete(s.Directory, recursive: true);
        Directory.CreateDirectory(s.Directory);
        var config = RandomLlama.Tiny(s.Vocab, s.Hidden, s.Layers, s.Heads, s.KvHeads, s.Intermediate);
        var lora = new LoraConfig
        {
            R = s.Rank,
            LoraAlpha = 2 * s.Rank,
            TargetModules = s.Targets == "all-linear" ? LoraTargets.All.Select(LoraTargets.Name).ToArray() : s.Targets.Split(','),
        };
        string modelDir = Path.Combine(s.Directory, "model"), adapterDir = Path.Combine(s.Directory, "adapter");
        string data = Path.Combine(s.Directory, "data.jsonl"), cacheDir = Path.Combine(s.Directory, "cache");
        log.WriteLine($"writing a random model ({s.Layers} layers, hidden {s.Hidden}, {s.Heads}/{s.KvHeads} heads, vocab {s.Vocab}) to {s.Directory}");
        RandomLlama.WriteModel(modelDir, config, seed: 1);
        var theta = RandomLlama.WriteAdapter(adapterDir, config, lora, seed: 2);
        var samples = RandomLlama.Samples(s.Samples, s.Vocab, 3, s.PromptTokens, s.PromptTokens, s.ResponseTokens, s.ResponseTokens);
        TrainingData.Write(data, samples);

        log.WriteLine("building the gradient cache ...");
        var result = GradientCacheBuilder.Build(new CacheBuildOptions
        {
            ModelDirectory = modelDir,
            AdapterDirectory = adapterDir,
            DataFile = data,
            OutputDirectory = cacheDir,
            Curvature = s.Curvature ? CurvatureMode.Sampled : CurvatureMode.None,
            BatchSize = s.BatchSize,
            BatchTokens = int.MaxValue,
            Device = s.Device,
            Precision = s.Precision,
        }, ModelProgressBar.ForConsole());
        long cacheBytes = Directory.EnumerateFiles(cacheDir).Sum(f => new FileInfo(f).Length);

        using var model = LlamaModel.Load(modelDir, s.Precision, s.Device);
        var layout = new LoraLayout(config, lora);
        var runtime = new LoraRuntime(model, layout);
        double baselineRate = double.NaN;
        if (s.BaselineSamples > 0)
        {
            log.WriteLine($"baseline: one forward + backward per sample ({s.BaselineSamples} samples) ...");
            var subset = samples.Take(s.BaselineSamples).ToList();
            runtime.PerSample([subset[0]], theta, s.Curvature, 1);
            var watch = Stopwatch.StartNew();
            foreach (var sample in subset)
                runtime.PerSample([sample], theta, s.Curvature, 1);
            baselineRate = subset.Count / watch.Elapsed.TotalSeconds;
        }
        log.WriteLine($"exact HVP over {s.HvpSamples} active samples ...");
        var active = samples.Take(s.HvpSamples).ToList();
        var v = new double[layout.ParameterCount];
        var random = new Random(5);
        for (int i = 0; i < v.Length; i++)
            v[i] = random.NextDouble() - 0.5;
        runtime.HessianVectorProduct(active.Take(Math.Min(2, active.Count)).ToList(), theta, v, s.BatchSize);
        var before = runtime.Timings.Clone();
        var hvpWatch = Stopwatch.StartNew();
        runtime.HessianVectorProduct(active, theta, v, s.BatchSize);
        double hvpSeconds = hvpWatch.Elapsed.TotalSeconds;
        double hvpForward = runtime.Timings.HvpForward - before.HvpForward;

        long modelParameters = model.WeightBytes / (s.Precision == ComputePrecision.Float64 ? 8 : 4);
        int computed = result.Samples - result.ResumedSamples;
        return new Report(s, result.Parameters, modelParameters, result.Seconds, result.ComputeSeconds,
            computed / result.ComputeSeconds, result.InputTokens / result.ComputeSeconds, result.ResponseTokens / result.ComputeSeconds,
            result.Timings, baselineRate, hvpSeconds / active.Count, hvpForward / hvpSeconds, ProcessMemory.PeakBytes(), model.WeightBytes,
            cacheBytes, result.Device, TorchSharp.torch.get_num_threads());
    }

    private static void Print(Report r)
    {
        var s = r.Settings;
        var t = r.Timings;
        double accounted = t.Forward + t.GradientBackward + t.CurvatureBackward + t.Transfer;
        Console.Out.WriteLine($"model      LLaMA {s.Layers} layers, hidden {s.Hidden}, heads {s.Heads}/{s.KvHeads} (GQA), intermediate {s.Intermediate}, vocab {s.Vocab}: {r.ModelParameters:N0} parameters, {s.Precision}, {r.Device}, {r.Threads} threads");
        Console.Out.WriteLine($"adapter    LoRA r = {s.Rank} on {s.Targets}: P = {r.Parameters:N0}");
        Console.Out.WriteLine($"data       {s.Samples} samples × ({s.PromptTokens} prompt + {s.ResponseTokens} response) tokens, batch {s.BatchSize}, curvature {(s.Curvature ? "sampled" : "none")}");
        Console.Out.WriteLine($"cache      {r.SamplesPerSecond:F2} samples/s, {r.InputTokensPerSecond:N0} input tokens/s ({r.ResponseTokensPerSecond:N0} response tokens/s); {r.BuildSeconds:F2} s in all, cache {r.CacheBytes / 1048576.0:N1} MiB");
        Console.Out.WriteLine($"  where    forward {Share(t.Forward)}, gradient backward {Share(t.GradientBackward)}, curvature backward {Share(t.CurvatureBackward)}, rows to host {Share(t.Transfer)}, writing + other {Share(r.ComputeSeconds - accounted + (r.BuildSeconds - r.ComputeSeconds))}");
        if (double.IsFinite(r.BaselineSamplesPerSecond))
            Console.Out.WriteLine($"  baseline one backward per sample: {r.BaselineSamplesPerSecond:F2} samples/s (batching: ×{r.SamplesPerSecond / r.BaselineSamplesPerSecond:F2})");
        Console.Out.WriteLine($"exact HVP  {r.HvpSecondsPerActiveSample * 1000:F2} ms per active sample (double backward; forward {r.HvpForwardShare:P0} of it)");
        Console.Out.WriteLine($"memory     peak {r.PeakMemoryBytes / 1048576.0:N0} MiB (process VmHWM), model weights {r.ModelBytes / 1048576.0:N1} MiB");

        string Share(double seconds) => $"{seconds:F2} s ({seconds / r.BuildSeconds:P0})";
    }
}
