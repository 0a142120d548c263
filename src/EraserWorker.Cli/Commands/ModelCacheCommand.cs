using System.CommandLine;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Models;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser cache build</c>: the gradient cache (SPEC §2) of a LLaMA model + LoRA adapter + JSONL data.</summary>
public static class ModelCacheCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (config.json, model.safetensors or shards; tokenizer.json/tokenizer.model for text data).", Required = true };
        var adapter = new Option<string>("--adapter") { Description = "PEFT LoRA adapter folder of that model.", Required = true };
        var data = new Option<string>("--data") { Description = "Training data, JSONL: {\"id\",\"prompt\",\"response\"} or {\"id\",\"promptIds\",\"responseIds\"}.", Required = true };
        var output = new Option<string>("--out") { Description = "Cache folder to write (must not exist or be empty).", Required = true };
        var l2 = new Option<double>("--l2") { Description = "L2 weight of the training objective Σᵢ ℓᵢ + (l2/2)‖θ‖² (sum convention; a mean objective's μ is l2 = n·μ).", DefaultValueFactory = _ => 0.0 };
        var curvature = new Option<string>("--curvature") { Description = "sampled (curvature rows from labels sampled from the model's predictions) | none (gradients only).", DefaultValueFactory = _ => "sampled" };
        var dtype = new Option<string>("--dtype") { Description = "Storage dtype of the rows: F32 | F16 | BF16.", DefaultValueFactory = _ => "F32" };
        var batchSize = new Option<int>("--batch-size") { Description = "Most samples per forward/backward pass.", DefaultValueFactory = _ => 16 };
        var batchTokens = new Option<int>("--batch-tokens") { Description = "Most padded tokens per pass.", DefaultValueFactory = _ => 8192 };
        var rowsPerShard = new Option<int>("--rows-per-shard") { Description = "Rows per shard (also the unit of resumption).", DefaultValueFactory = _ => 1024 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the sampled labels.", DefaultValueFactory = _ => 1UL };
        var device = new Option<string>("--device") { Description = "auto | cpu | cuda | cuda:N", DefaultValueFactory = _ => "auto" };
        var precision = new Option<ComputePrecision>("--precision") { Description = "Float32 (default) or Float64 compute." };
        var json = new Option<bool>("--json") { Description = "Print the summary as one JSON object." };

        var build = new Command("build", "Compute per-sample LoRA gradients (and curvature rows) of a training set and write them as a gradient cache. Resumable: rerun the same command after an interruption.")
        {
            model, adapter, data, output, l2, curvature, dtype, batchSize, batchTokens, rowsPerShard, seed, device, precision, json,
        };
        build.SetAction((parse, cancellation) => Task.Run(() =>
        {
            var bar = ModelProgressBar.ForConsole();
            int exit = CliErrors.Run(() =>
            {
                var options = new CacheBuildOptions
                {
                    ModelDirectory = parse.GetValue(model)!,
                    AdapterDirectory = parse.GetValue(adapter)!,
                    DataFile = parse.GetValue(data)!,
                    OutputDirectory = parse.GetValue(output)!,
                    L2 = parse.GetValue(l2),
                    Curvature = parse.GetValue(curvature) switch
                    {
                        "sampled" => CurvatureMode.Sampled,
                        "none" => CurvatureMode.None,
                        var other => throw new ArgumentException($"--curvature must be sampled or none (got '{other}')."),
                    },
                    DType = parse.GetValue(dtype)!.ToUpperInvariant(),
                    BatchSize = parse.GetValue(batchSize),
                    BatchTokens = parse.GetValue(batchTokens),
                    RowsPerShard = parse.GetValue(rowsPerShard),
                    Seed = parse.GetValue(seed),
                    Device = parse.GetValue(device)!,
                    Precision = parse.GetValue(precision),
                };
                CacheBuildResult result;
                try
                {
                    result = GradientCacheBuilder.Build(options, bar, cancellation);
                }
                finally
                {
                    bar.Finish();
                }
                long peak = ProcessMemory.PeakBytes();
                if (parse.GetValue(json))
                    Console.Out.WriteLine(JsonSerializer.Serialize(new { result, peakMemoryBytes = peak }, CliJson.Options));
                else
                    Print(result, peak);
                return 0;
            });
            if (exit == 130)
                Console.Error.WriteLine("eraser: the finished shards are kept; rerun the same command to resume.");
            return exit;
        }, CancellationToken.None));

        return new Command("cache", "Gradient caches made from a model (see `eraser cache build`).") { build };
    }

    private static void Print(CacheBuildResult r, long peak)
    {
        int computed = r.Samples - r.ResumedSamples;
        Console.Out.WriteLine($"Wrote {r.OutputDirectory}");
        Console.Out.WriteLine($"  samples    {r.Samples:N0} ({r.ResumedSamples:N0} resumed), P = {r.Parameters:N0}, {r.InputTokens:N0} input / {r.ResponseTokens:N0} response tokens");
        Console.Out.WriteLine($"  loss       mean ℓ = {r.MeanLoss:G6} (computed samples)");
        if (computed > 0)
            Console.Out.WriteLine($"  throughput {computed / r.ComputeSeconds:F2} samples/s on {r.Device} (compute only), {computed / r.Seconds:F2} samples/s overall");
        var t = r.Timings;
        Console.Out.WriteLine($"  time       {r.Seconds:F2} s: forward {t.Forward:F2}, gradient backward {t.GradientBackward:F2}, curvature backward {t.CurvatureBackward:F2}, to host {t.Transfer:F2}, other {r.Seconds - t.Forward - t.GradientBackward - t.CurvatureBackward - t.Transfer:F2}");
        Console.Out.WriteLine($"  memory     peak {peak / 1048576.0:N0} MiB (model weights {r.ModelBytes / 1048576.0:N1} MiB)");
    }
}
