using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;

namespace EraserWorker.Unlearning;

/// <summary>
/// Every version is computed from the base with the cumulative edits (SPEC §1), so the replacement sets of requests
/// applied in earlier versions take part in every later solve. A worker that did not check those requests itself — it
/// started after them, or evicted and reloaded the adapter — has not opened their sets: this opens them from the store
/// before the solve.
/// </summary>
public static class ReplayedReplacementSets
{
    /// <summary>Downloads and opens each replacement set named by <paramref name="edits"/> that <paramref name="warm"/> has
    /// not opened. A set that is gone from the store, unreadable or for other parameters than the cache throws
    /// <see cref="UnlearningException"/> (<c>ReplacementMissing</c> / <c>InvalidCache</c>): the adapter's history cannot be
    /// replayed until it is restored. Storage trouble propagates (transient).</summary>
    public static async Task EnsureLoadedAsync(AdapterStore store, WarmAdapter warm, EditSet edits, CancellationToken cancellation)
    {
        foreach (var uri in edits.Replaced.Values.Distinct(StringComparer.Ordinal))
        {
            if (warm.TryGetReplacements(uri, out _))
                continue;
            var directory = Path.Combine(warm.Directory, "replacements", Guid.NewGuid().ToString("N"));
            GradientCache set;
            try
            {
                await store.DownloadReplacementsAsync(warm.AdapterId, uri, directory, cancellation);
                set = GradientCache.Open(directory);
            }
            catch (ReplacementsNotFoundException e)
            {
                TryDelete(directory);
                throw new UnlearningException(FailureCodes.ReplacementMissing,
                    $"Replacement set '{uri}', applied in an earlier version of '{warm.AdapterId}', is no longer in the store; later versions cannot be computed.", e);
            }
            catch (Exception e) when (e is ArgumentException or InvalidDataException or GradientCacheException or FileNotFoundException)
            {
                TryDelete(directory);
                throw new UnlearningException(FailureCodes.InvalidCache,
                    $"Replacement set '{uri}', applied in an earlier version of '{warm.AdapterId}', cannot be used: {e.Message}", e);
            }
            try
            {
                InputValidation.ReplacementSetMatchesCache(set, warm.Engine.Cache, $"'{uri}', applied in an earlier version of '{warm.AdapterId}',");
            }
            catch
            {
                set.Dispose();
                TryDelete(directory);
                throw;
            }
            warm.AddReplacements(uri, set);
        }
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
