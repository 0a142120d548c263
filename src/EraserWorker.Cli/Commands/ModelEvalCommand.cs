using System.CommandLine;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Models;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser eval</c>: per-sample and mean loss, and greedy exact match of the responses.</summary>
public static class ModelEvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter folder (omit to evaluate the base model)." };
        var data = new Option<string>("--data") { Description = "Samples (JSONL, text or token ids).", Required = true };
        var ids = new Option<string[]>("--ids") { Description = "Evaluate only these sample ids, comma-separated; may be repeated.", Arity = ArgumentArity.ZeroOrMore };
        var idsFile = new Option<string?>("--ids-file") { Description = "File with one sample id per line to evaluate." };
        var batchSize = new Option<int>("--batch-size") { Description = "Samples per forward pass.", DefaultValueFactory = _ => 16 };
        var device = new Option<string>("--device") { Description = "auto | cpu | cuda | cuda:N", DefaultValueFactory = _ => "auto" };
        var precision = new Option<ComputePrecision>("--precision") { Description = "Float32 (default) or Float64 compute." };
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object." };

        var command = new Command("eval", "Per-sample loss (mean cross-entropy of the response tokens), mean loss and greedy exact match of the responses.")
        {
            model, adapter, data, ids, idsFile, batchSize, device, precision, json,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var problems = new ComputeOptions { Device = parse.GetValue(device)!, Precision = parse.GetValue(precision) }
                .Problems(name => name == nameof(ComputeOptions.Device) ? "--device" : "--precision").ToList();
            if (parse.GetValue(batchSize) < 1)
                problems.Add($"--batch-size must be at least 1 (got {parse.GetValue(batchSize)}).");
            if (problems.Count > 0)
                throw new ArgumentException(string.Join(" ", problems));
            var config = LlamaConfig.Load(parse.GetValue(model)!);
            LoraLayout layout;
            double[] theta;
            string? adapterDir = parse.GetValue(adapter);
            if (adapterDir is not null)
                (layout, theta) = LoraAdapterFiles.Read(adapterDir, config);
            else
            {
                // The base model: any LoRA with A = B = 0 adds exactly nothing.
                layout = new LoraLayout(config, new LoraConfig { R = 1, TargetModules = ["q_proj"], LayersToTransform = [0] });
                theta = new double[layout.ParameterCount];
            }
            var tokenizer = ModelTokenizer.TryLoad(parse.GetValue(model)!, config);
            var samples = TrainingData.Load(parse.GetValue(data)!, config.VocabSize, tokenizer);
            var only = UnlearnCommand.ParseIds(parse.GetValue(ids) ?? [], parse.GetValue(idsFile));
            if (only.Count > 0)
            {
                var known = samples.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
                foreach (var id in only)
                    if (!known.Contains(id))
                        throw new ArgumentException($"Sample '{id}' is not in the data.");
                var wanted = only.ToHashSet(StringComparer.Ordinal);
                samples = samples.Where(s => wanted.Contains(s.Id)).ToList();
            }
            using var llama = LlamaModel.Load(parse.GetValue(model)!, parse.GetValue(precision), parse.GetValue(device)!);
            var (losses, exact, correct) = new LoraRuntime(llama, layout).Evaluate(samples, theta, parse.GetValue(batchSize));
            var perSample = samples.Select((s, i) => new EvalSample(s.Id, losses[i], exact[i], correct[i], s.ResponseIds.Length)).ToList();
            var result = new EvalResult(samples.Count, losses.Average(), exact.Count(e => e) / (double)samples.Count,
                correct.Sum() / (double)samples.Sum(s => s.ResponseIds.Length), perSample);
            if (parse.GetValue(json))
                Console.Out.WriteLine(JsonSerializer.Serialize(result, CliJson.Options));
            else
            {
                foreach (var s in perSample)
                    Console.Out.WriteLine($"{s.Id}\tloss {s.Loss:F6}\t{s.CorrectTokens}/{s.ResponseTokens} tokens\t{(s.ExactMatch ? "exact" : "-")}");
                Console.Out.WriteLine($"mean loss {result.MeanLoss:F6}; exact match {result.ExactMatch:P1}; token accuracy {result.TokenAccuracy:P1} ({result.Samples} samples)");
            }
            return 0;
        }));
        return command;
    }
}

public sealed record EvalSample(string Id, double Loss, bool ExactMatch, int CorrectTokens, int ResponseTokens);

public sealed record EvalResult(int Samples, double MeanLoss, double ExactMatch, double TokenAccuracy, IReadOnlyList<EvalSample> PerSample);
