using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using EraserWorker.Cli.Benchmarks;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser bench engine</c>: throughput figures of the compute core on a synthetic cache.</summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var samples = new Option<int>("--samples") { Description = "Rows n of the synthetic cache.", DefaultValueFactory = _ => 2000 };
        var parameters = new Option<int>("--parameters") { Description = "Parameters P.", DefaultValueFactory = _ => 250_000 };
        var dtype = new Option<string>("--dtype") { Description = "Storage dtype: F32 | F16 | BF16.", DefaultValueFactory = _ => "F16" };
        var noCurvature = new Option<bool>("--no-curvature") { Description = "Write gradients only (empirical Fisher)." };
        var directory = new Option<string>("--data", "--dir") { Description = "Data folder for the synthetic adapter and cache (reused when it already holds a matching cache).", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "eraser-bench") };
        var shape = new Option<string?>("--shape") { Description = $"Parameter layout instead of --parameters: {SyntheticCache.Llama7bQvR8} (LLaMA-7B q_proj and v_proj, r = 8: P = 4 194 304)." };
        var budget = new Option<long?>("--memory-budget-mb") { Description = "Eraser:Compute:MemoryBudgetBytes for the engine, MiB (default: the engine's 4 GiB)." };
        var residency = new Option<RowResidency>("--residency") { Description = "Eraser:Compute:Residency: Auto (by the budget), Resident or Streamed." };
        var outOfCore = new Option<bool>("--out-of-core") { Description = "Measure the exact path on rows streamed from disk instead: streaming pass, cold / warm / restarted solves, peak RSS against the budget." };
        var deleteData = new Option<bool>("--delete-data") { Description = "Delete the data folder after the run." };
        var batches = new Option<string>("--batches") { Description = "Removal batch sizes, comma-separated.", DefaultValueFactory = _ => "1,8,64" };
        var solvers = new Option<string>("--solvers") { Description = "Solvers to time warm, comma-separated.", DefaultValueFactory = _ => "direct,cg,llmeraser" };
        var numpy = new Option<string?>("--numpy") { Description = "Path of bench/numpy_unlearn.py to run the numpy + OpenBLAS baseline side by side (default: found in the repository; 'none' to skip)." };
        var python = new Option<string>("--python") { Description = "Python interpreter for the baseline.", DefaultValueFactory = _ => "/usr/bin/python3" };
        var json = new Option<bool>("--json") { Description = "Print the figures as JSON." };
        var coldRuns = new Option<int>("--cold-runs") { Description = "Alternating cold runs of eraser and numpy (the median is reported).", DefaultValueFactory = _ => 3 };

        var engine = new Command("engine", "Streaming pass, warm solves per solver and batch size, peak memory, and cold `eraser unlearn` vs numpy.")
        {
            samples, parameters, dtype, noCurvature, directory, batches, solvers, numpy, python, json, coldRuns,
            shape, budget, residency, outOfCore, deleteData,
        };
        engine.SetAction((parse, cancellation) => CliErrors.RunAsync(async () =>
        {
            if (parse.GetValue(outOfCore))
            {
                var ooc = new OutOfCoreBenchmark.Settings(parse.GetValue(samples), parse.GetValue(shape), parse.GetValue(parameters),
                    parse.GetValue(dtype)!, !parse.GetValue(noCurvature), parse.GetValue(directory)!,
                    (parse.GetValue(budget) ?? 4096) << 20, parse.GetValue(residency),
                    parse.GetValue(batches)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray(),
                    parse.GetValue(deleteData));
                var oocReport = await Task.Run(() => OutOfCoreBenchmark.Run(ooc, Console.Error, cancellation), cancellation);
                if (parse.GetValue(json))
                    Console.Out.WriteLine(JsonSerializer.Serialize(oocReport, CliJson.Options));
                else
                    OutOfCoreBenchmark.Print(oocReport, Console.Out);
                return 0;
            }
            var settings = new EngineBenchmark.Settings(
                parse.GetValue(samples), parse.GetValue(parameters), parse.GetValue(dtype)!, !parse.GetValue(noCurvature),
                parse.GetValue(directory)!,
                parse.GetValue(batches)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray(),
                parse.GetValue(solvers)!.Split(',', StringSplitOptions.RemoveEmptyEntries),
                ResolveNumpyScript(parse.GetValue(numpy)), parse.GetValue(python)!, Math.Max(1, parse.GetValue(coldRuns)));
            var report = await EngineBenchmark.RunAsync(settings, Console.Error, cancellation);
            if (parse.GetValue(json))
                Console.Out.WriteLine(JsonSerializer.Serialize(report, CliJson.Options));
            else
                EngineBenchmark.Print(report, Console.Out);
            return 0;
        }));

        return new Command("bench", "Benchmarks that print figures (see README, Performance).") { engine };
    }

    private static string? ResolveNumpyScript(string? value)
    {
        if (value == "none")
            return null;
        if (value is not null)
            return value;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "bench", "numpy_unlearn.py");
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }
}
