using System.CommandLine;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Models;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser train</c>: LoRA fine-tuning with AdamW (adapters and retraining baselines).</summary>
public static class ModelTrainCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var data = new Option<string>("--data") { Description = "Training data (JSONL, text or token ids).", Required = true };
        var output = new Option<string>("--out") { Description = "Adapter folder to write (PEFT format).", Required = true };
        var init = new Option<string?>("--adapter") { Description = "Continue from this adapter (its configuration and weights) instead of a new one." };
        var rank = new Option<int>("--rank") { Description = "LoRA rank r of a new adapter.", DefaultValueFactory = _ => 8 };
        var alpha = new Option<double>("--alpha") { Description = "lora_alpha of a new adapter.", DefaultValueFactory = _ => 16 };
        var targets = new Option<string>("--target-modules") { Description = "Comma-separated module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear.", DefaultValueFactory = _ => "q_proj,v_proj" };
        var rslora = new Option<bool>("--rslora") { Description = "Scale by alpha/√r (rsLoRA) instead of alpha/r." };
        var epochs = new Option<int>("--epochs") { Description = "Passes over the data.", DefaultValueFactory = _ => 3 };
        var batchSize = new Option<int>("--batch-size") { Description = "Samples per step (≥ n: full batch).", DefaultValueFactory = _ => 8 };
        var lr = new Option<double>("--lr") { Description = "AdamW learning rate.", DefaultValueFactory = _ => 1e-3 };
        var schedule = new Option<string>("--schedule") { Description = "Learning-rate schedule: constant | linear (to 0) | cosine (to 0).", DefaultValueFactory = _ => "linear" };
        var weightDecay = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 0.0 };
        var l2 = new Option<double>("--l2") { Description = "L2 in the objective, sum convention Σℓᵢ + (l2/2)‖θ‖² (give the same --l2 to `eraser cache build`).", DefaultValueFactory = _ => 0.0 };
        var seed = new Option<int>("--seed") { Description = "Seed of the initialisation and the shuffles.", DefaultValueFactory = _ => 1 };
        var exclude = new Option<string[]>("--exclude") { Description = "Sample ids to leave out (retraining baseline), comma-separated; may be repeated.", Arity = ArgumentArity.ZeroOrMore };
        var excludeFile = new Option<string?>("--exclude-file") { Description = "File with one sample id to leave out per line." };
        var device = new Option<string>("--device") { Description = "auto | cpu | cuda | cuda:N", DefaultValueFactory = _ => "auto" };
        var precision = new Option<ComputePrecision>("--precision") { Description = "Float32 (default) or Float64 compute." };
        var json = new Option<bool>("--json") { Description = "Print the summary as one JSON object." };

        var command = new Command("train", "Fine-tune a LoRA adapter with AdamW (seeded) and write it in PEFT format.")
        {
            model, data, output, init, rank, alpha, targets, rslora, epochs, batchSize, lr, schedule, weightDecay, l2, seed, exclude, excludeFile, device, precision, json,
        };
        command.SetAction((parse, cancellation) => Task.Run(() => CliErrors.Run(() =>
        {
            string modules = parse.GetValue(targets)!;
            var options = new TrainOptions
            {
                ModelDirectory = parse.GetValue(model)!,
                DataFile = parse.GetValue(data)!,
                OutputDirectory = parse.GetValue(output)!,
                InitialAdapter = parse.GetValue(init),
                Lora = new LoraConfig
                {
                    R = parse.GetValue(rank),
                    LoraAlpha = parse.GetValue(alpha),
                    UseRsLora = parse.GetValue(rslora),
                    TargetModules = modules == "all-linear"
                        ? LoraTargets.All.Select(LoraTargets.Name).ToArray()
                        : modules.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                },
                Epochs = parse.GetValue(epochs),
                BatchSize = parse.GetValue(batchSize),
                LearningRate = parse.GetValue(lr),
                Schedule = parse.GetValue(schedule)!,
                WeightDecay = parse.GetValue(weightDecay),
                L2 = parse.GetValue(l2),
                Seed = parse.GetValue(seed),
                Exclude = [],
                Device = parse.GetValue(device)!,
                Precision = parse.GetValue(precision),
            };
            if (options.Problems(OptionName) is { Count: > 0 } problems)
                throw new ArgumentException(string.Join(" ", problems));
            options = options with { Exclude = UnlearnCommand.ParseIds(parse.GetValue(exclude) ?? [], parse.GetValue(excludeFile)) };
            bool asJson = parse.GetValue(json);
            var progress = new Progress(options.Epochs);
            var result = LoraTrainer.Train(options, progress, cancellation);
            if (asJson)
                Console.Out.WriteLine(JsonSerializer.Serialize(result, CliJson.Options));
            else
            {
                Console.Out.WriteLine($"Wrote {result.OutputDirectory}");
                Console.Out.WriteLine($"  samples    {result.Samples:N0}, P = {result.Parameters:N0}");
                Console.Out.WriteLine($"  loss       mean ℓ {result.InitialMeanLoss:G6} → {result.FinalMeanLoss:G6}");
                Console.Out.WriteLine($"  optimum    ‖∇(Σℓᵢ + (l2/2)‖θ‖²)‖ = {result.FinalGradientNorm:G4} at the end");
                Console.Out.WriteLine($"  time       {result.Seconds:F2} s");
            }
            return 0;
        }), CancellationToken.None));
        return command;
    }

    private static string OptionName(string setting) => setting switch
    {
        nameof(TrainOptions.Epochs) => "--epochs",
        nameof(TrainOptions.BatchSize) => "--batch-size",
        nameof(TrainOptions.LearningRate) => "--lr",
        nameof(TrainOptions.Schedule) => "--schedule",
        nameof(TrainOptions.WeightDecay) => "--weight-decay",
        nameof(TrainOptions.L2) => "--l2",
        "Lora.R" => "--rank",
        "Lora.LoraAlpha" => "--alpha",
        nameof(TrainOptions.Device) => "--device",
        nameof(TrainOptions.Precision) => "--precision",
        _ => setting,
    };

    /// <summary>Epoch lines on standard error: the first, the last, and at most one a second between.</summary>
    private sealed class Progress(int epochs) : IProgress<TrainEpoch>
    {
        private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
        private double _last = double.NegativeInfinity;

        public void Report(TrainEpoch e)
        {
            double now = _clock.Elapsed.TotalSeconds;
            if (e.Epoch != 1 && e.Epoch != epochs && now - _last < 1)
                return;
            _last = now;
            Console.Error.WriteLine($"epoch {e.Epoch,4}/{epochs}: mean loss {e.MeanLoss:G6} ({e.Seconds:F2} s)");
        }
    }
}
