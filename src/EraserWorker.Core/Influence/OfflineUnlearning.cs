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
    /// Validates every input before any work, computes θ' and writes the new adapter atomically:
    /// on any failure the output folder does not exist.
    /// </summary>
    public static UnlearningUpdate Run(OfflineUnlearningJob job, IProgress<EngineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        if (Directory.Exists(job.OutputDirectory) && Directory.EnumerateFileSystemEntries(job.OutputDirectory).Any())
            throw new IOException($"The output folder '{job.OutputDirectory}' already exists and is not empty; versions are never overwritten.");
        if (job.Remove.Count == 0 && job.ReplacementsDirectory is null)
            throw new UnlearningException(UnlearningException.InvalidRequest, "Nothing to do: give samples to remove and/or a replacement set.");

        var adapter = PeftAdapter.Open(job.AdapterDirectory);
        using var replacements = job.ReplacementsDirectory is null ? null : GradientCache.Open(job.ReplacementsDirectory);
        var cache = GradientCache.Open(job.CacheDirectory);
        // Unknown ids fail now, before the cache is loaded.
        foreach (var id in job.Remove.Concat(replacements?.Ids ?? []))
            if (!cache.TryGetRow(id, out _))
            {
                cache.Dispose();
                throw new UnlearningException(UnlearningException.UnknownSample, $"Sample '{id}' is not in the gradient cache.");
            }
        InfluenceEngine engine;
        try
        {
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
