using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;

namespace EraserWorker.Components.Warm;

/// <summary>
/// Replacement sets of a warm adapter: each downloaded and opened once, checked against the cache's parameter layout
/// (<see cref="InputValidation"/>), then kept until the adapter is evicted. Both the check of a new request and the replay
/// of earlier versions' edits (every version is computed from the base with the cumulative edits, SPEC §1) go through here.
/// </summary>
public sealed class ReplacementSetLoader(AdapterStore store)
{
    /// <summary>The set at <paramref name="uri"/>, or null when the store has none there. A set that cannot be used throws
    /// <see cref="UnlearningException"/> (<c>InvalidCache</c>, or <c>InvalidRequest</c> for a URI of another adapter);
    /// storage trouble propagates (transient).</summary>
    public async Task<GradientCache?> GetAsync(WarmAdapter warm, string uri, CancellationToken cancellation)
    {
        if (warm.TryGetReplacements(uri, out var loaded))
            return loaded;
        var directory = Path.Combine(warm.Directory, "replacements", Guid.NewGuid().ToString("N"));
        GradientCache set;
        try
        {
            await store.DownloadReplacementsAsync(warm.AdapterId, uri, directory, cancellation);
            set = InputValidation.OpenCache(directory, $"replacement set '{uri}'");
        }
        catch (ReplacementsNotFoundException)
        {
            LocalFolder.TryDelete(directory);
            return null;
        }
        catch (ArgumentException e)
        {
            LocalFolder.TryDelete(directory);
            throw new UnlearningException(FailureCodes.InvalidRequest, $"Replacement set '{uri}' cannot be used: {e.Message}", e);
        }
        catch (UnlearningException)
        {
            LocalFolder.TryDelete(directory);
            throw;
        }
        try
        {
            InputValidation.ReplacementSetMatchesCache(set, warm.Engine.Cache, $"'{uri}'");
        }
        catch
        {
            set.Dispose();
            LocalFolder.TryDelete(directory);
            throw;
        }
        warm.AddReplacements(uri, set);
        return set;
    }

    /// <summary>Opens every set the cumulative edit set names that this process has not opened (it started after those
    /// requests, or evicted and reloaded the adapter). A set gone from the store means the history cannot be replayed:
    /// <c>ReplacementMissing</c>.</summary>
    public async Task EnsureLoadedAsync(WarmAdapter warm, EditSet edits, CancellationToken cancellation)
    {
        foreach (var uri in edits.Replaced.Values.Distinct(StringComparer.Ordinal))
        {
            if (await GetAsync(warm, uri, cancellation) is null)
                throw new UnlearningException(FailureCodes.ReplacementMissing,
                    $"Replacement set '{uri}', applied in an earlier version of '{warm.AdapterId}', is no longer in the store; later versions cannot be computed.");
        }
    }
}
