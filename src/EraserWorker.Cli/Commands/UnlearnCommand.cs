using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Commands;

/// <summary><c>eraser unlearn</c> (SPEC §6): one offline update of an adapter folder.</summary>
public static class UnlearnCommand
{
    public static Command Create()
    {
        var adapter = new Option<string>("--adapter") { Description = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors).", Required = true };
        var cache = new Option<string>("--cache") { Description = "Gradient cache folder (eraser.gradcache/v1).", Required = true };
        var remove = new Option<string[]>("--remove")
        {
            Description = "Sample ids to remove, comma-separated; may be repeated.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var removeFile = new Option<string?>("--remove-file") { Description = "File with one sample id to remove per line." };
        var replacements = new Option<string?>("--replacements") { Description = "Replacement set folder (same format as the cache; its ids name the samples it corrects)." };
        var output = new Option<string>("--out") { Description = "Folder for the new adapter (must not exist or be empty).", Required = true };
        var damping = new Option<double?>("--damping") { Description = "Damping δ added to the cache's l2 (default: SPEC §1 rule)." };
        var solver = new Option<string>("--solver") { Description = "auto | direct | cg | llmeraser", DefaultValueFactory = _ => "auto" };
        solver.AcceptOnlyFromAmong("auto", "direct", "cg", "llmeraser");
        var json = new Option<bool>("--json") { Description = "Print the result as one JSON object." };
        var options = new ComputeCliOptions();

        var command = new Command("unlearn", "Compute the influence-function update for removed and/or corrected samples and write a new adapter.")
        {
            adapter, cache, remove, removeFile, replacements, output, damping, solver, json,
        };
        options.AddTo(command);

        command.SetAction((parse, cancellation) =>
        {
            var watch = Stopwatch.StartNew();
            var stdout = parse.InvocationConfiguration.Output;
            var solverOptions = options.Solver(parse, SolverOptions.ParseKind(parse.GetValue(solver)!), parse.GetValue(damping));
            var computeOptions = options.Compute(parse);
            options.Validate(parse, solverOptions, computeOptions);
            var ids = ParseIds(parse.GetValue(remove) ?? [], parse.GetValue(removeFile));
            var job = new OfflineUnlearningJob(parse.GetValue(adapter)!, parse.GetValue(cache)!, ids, parse.GetValue(replacements),
                parse.GetValue(output)!, solverOptions, computeOptions);
            var update = OfflineUnlearning.Run(job, new ProgressPrinter(parse.InvocationConfiguration.Error), cancellation);
            var result = new UnlearnResult(job.OutputDirectory, update.Report.Solver, update.Report.Method,
                update.Report.Iterations, update.Report.RelativeResidual, update.UpdateNorm, update.Report.Damping,
                update.Report.Lambda, update.Report.Seconds, watch.Elapsed.TotalSeconds, update.Edits.Removed,
                update.Edits.Replaced, update.Edits.Active, update.Edits.Parameters, ProcessMemory.PeakBytes())
            {
                Rows = update.Report.Rows,
            };
            if (parse.GetValue(json))
                stdout.WriteLine(JsonSerializer.Serialize(result, CliJson.Options));
            else
                PrintSummary(stdout, result);
            return Task.FromResult(0);
        });
        return command;
    }

    internal static IReadOnlyCollection<string> ParseIds(IEnumerable<string> values, string? file)
    {
        var ids = new List<string>();
        foreach (var value in values)
            ids.AddRange(value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));
        if (file is not null)
        {
            if (!File.Exists(file))
                throw new FileNotFoundException($"The remove file '{file}' does not exist.");
            // Sample ids are opaque but never empty and never contain line breaks (SPEC §3); blank lines are skipped.
            ids.AddRange(File.ReadLines(file).Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0));
        }
        return ids.Distinct(StringComparer.Ordinal).ToList();
    }

    private static void PrintSummary(TextWriter stdout, UnlearnResult r)
    {
        stdout.WriteLine($"Wrote {r.Output}");
        stdout.WriteLine($"  edits      {r.Removed} removed, {r.Replaced} replaced; {r.Active:N0} active samples, P = {r.Parameters:N0}");
        stdout.WriteLine($"  solver     {r.Solver} ({r.Method}), {r.Iterations} iteration(s), {r.SolveSeconds:F3} s");
        stdout.WriteLine($"  residual   ‖H'x − b‖/‖b‖ = {r.RelativeResidual:E2}");
        stdout.WriteLine($"  damping    δ = {r.Damping:G4}, λ = l2 + δ = {r.Lambda:G4}");
        stdout.WriteLine($"  update     ‖θ' − θ₀‖ = {r.UpdateNorm:G6}");
        if (r.Rows is { } rows)
            stdout.WriteLine($"  rows       {rows.Residency} {rows.DType}, {rows.Passes} pass(es): {rows.Reason}");
        stdout.WriteLine($"  total      {r.Seconds:F2} s, peak memory {r.PeakMemoryBytes / 1048576.0:N0} MiB");
    }
}

public sealed record UnlearnResult(
    string Output, string Solver, string Method, int Iterations, double RelativeResidual, double UpdateNorm,
    double Damping, double Lambda, double SolveSeconds, double Seconds, int Removed, int Replaced, int Active,
    long Parameters, long PeakMemoryBytes)
{
    /// <summary>How the curvature rows were held (resident or streamed) and why; null when nothing was solved.</summary>
    public RowsReport? Rows { get; init; }
}
