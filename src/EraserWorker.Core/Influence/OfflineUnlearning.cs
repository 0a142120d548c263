using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Core.Influence;

/// <summary>One offline update (SPEC §6 <c>eraser unlearn</c>): folders in, a new adapter folder out.</summary>
public sealed record OfflineUnlearningJob(
    string AdapterDirectory,
    string CacheDirectory,
    IReadOnlyCollection<string> Remove,
    string? ReplacementsDirectory,
    string OutputDirectory,
    SolverOptions Solver,
    ComputeOptions Compute);

public static class OfflineUnlearning
{
    /// <summary>Key under which the job's replacement set appears in the edit set.</summary>
    public const string ReplacementsKey = "replacements";

    /// <summary>
    /// Validates every input before any work — options, the output location, adapter, cache, replacement set, sample ids,
    /// and every row's values (<see cref="InputValidation"/>, the same checks as registration and the worker) — computes θ',
    /// refuses it unless the solve is accepted (<see cref="SolveAcceptance"/>) and writes the new adapter atomically: on
    /// any failure the output folder does not exist.
    /// </summary>
    public static UnlearningUpdate Run(OfflineUnlearningJob job, IProgress<EngineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        if (job.Solver.Problems(name => name).Concat(job.Compute.Problems(name => name)) is var problems && problems.Any())
            throw new UnlearningException(FailureCodes.InvalidRequest, string.Join(" ", problems));
        if (job.Remove.Count == 0 && job.ReplacementsDirectory is null)
            throw new UnlearningException(FailureCodes.InvalidRequest, "Nothing to do: give samples to remove and/or a replacement set.");
        PeftAdapter.CheckWritable(job.OutputDirectory);

        var adapter = InputValidation.OpenAdapter(job.AdapterDirectory);
        using var replacements = job.ReplacementsDirectory is null ? null : InputValidation.OpenCache(job.ReplacementsDirectory, "replacement set");
        var cache = InputValidation.OpenCache(job.CacheDirectory);
        InfluenceEngine engine;
        try
        {
            InputValidation.AdapterMatchesCache(adapter, cache);
            if (replacements is not null)
            {
                string label = $"'{job.ReplacementsDirectory}'";
                InputValidation.ReplacementSetMatchesCache(replacements, cache, label);
                InputValidation.SamplesKnown(replacements.Ids, cache);
            }
            InputValidation.SamplesKnown(job.Remove, cache);
            // Every value is checked, not only the rows this solve reads: the curvature rows while they load, the gradient
            // rows here, the replacement set's rows in full.
            InputValidation.AllRowsFinite(cache, $"gradient cache '{job.CacheDirectory}'", curvatureToo: false, progress, cancellation);
            if (replacements is not null)
                InputValidation.AllRowsFinite(replacements, $"replacement set '{job.ReplacementsDirectory}'", curvatureToo: true, progress, cancellation);
            engine = InfluenceEngine.Load(adapter, cache, job.Compute, progress, cancellation);
        }
        catch
        {
            cache.Dispose();
            throw;
        }
        using (engine)
        {
            var edits = EditSet.Empty.Remove(job.Remove);
            if (replacements is not null)
                edits = edits.Replace(replacements.Ids, ReplacementsKey);
            var update = engine.Compute(edits, _ => replacements!, job.Solver, progress, cancellation);
            adapter.WriteUpdated(job.OutputDirectory, engine.Parameters, update.Theta);
            return update;
        }
    }
}
