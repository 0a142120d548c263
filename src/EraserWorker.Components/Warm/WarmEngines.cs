using EraserWorker.Contracts;
using System.Diagnostics;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Components.Observability;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Components.Warm;

/// <summary>One adapter's warm state: its base adapter on local disk, the loaded engine and opened replacement sets.</summary>
public sealed class WarmAdapter(string adapterId, PeftAdapter baseAdapter, InfluenceEngine engine, string directory) : IWarm
{
    private readonly Dictionary<string, GradientCache> _replacements = new(StringComparer.Ordinal);

    public string AdapterId { get; } = adapterId;
    public PeftAdapter BaseAdapter { get; } = baseAdapter;
    public InfluenceEngine Engine { get; } = engine;
    public string Directory { get; } = directory;

    /// <summary>Serialises the work on this adapter within the process.</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);

    public bool TryGetReplacements(string uri, out GradientCache set) => _replacements.TryGetValue(uri, out set!);

    public void AddReplacements(string uri, GradientCache set) => _replacements[uri] = set;

    public GradientCache Replacements(string uri) =>
        _replacements.TryGetValue(uri, out var set)
            ? set
            : throw new UnlearningException(FailureCodes.ReplacementMissing, $"Replacement set '{uri}' is not loaded.");

    public void Dispose()
    {
        Engine.Dispose();
        foreach (var set in _replacements.Values)
            set.Dispose();
        Gate.Dispose();
    }
}

/// <summary>
/// Least-recently-used set of warm adapters: the base (version 0) and its cache are downloaded and loaded once,
/// then serve every batch until evicted. Versions are always computed from this base (path independence).
/// </summary>
public sealed class WarmEngines : IDisposable
{
    private readonly AdapterStore _store;
    private readonly IOptions<WorkerOptions> _worker;
    private readonly IOptions<ComputeOptions> _compute;
    private readonly EraserMetrics _metrics;
    private readonly ILogger<WarmEngines> _logger;
    private readonly WarmSet<WarmAdapter> _warm;

    public WarmEngines(AdapterStore store, IOptions<WorkerOptions> worker, IOptions<ComputeOptions> compute, EraserMetrics metrics,
        ILogger<WarmEngines> logger)
    {
        (_store, _worker, _compute, _metrics, _logger) = (store, worker, compute, metrics, logger);
        _warm = new WarmSet<WarmAdapter>(() => worker.Value.MaxWarmAdapters, LoadAsync, evicted =>
        {
            LocalFolder.TryDelete(evicted.Directory);
            logger.LogInformation("Evicted warm adapter {AdapterId}", evicted.AdapterId);
        });
    }

    /// <summary>The warm state of an adapter, loading it when absent. Null when the adapter is not registered.</summary>
    public async Task<WarmAdapter?> GetAsync(string adapterId, CancellationToken cancellation)
    {
        var warm = await _warm.GetAsync(adapterId, cancellation);
        _metrics.SetCachedAdapters(_warm.Count);
        return warm;
    }

    private async Task<WarmAdapter?> LoadAsync(string adapterId, CancellationToken cancellation)
    {
        if (await _store.GetHeadAsync(adapterId, cancellation) is null)
            return null;
        var watch = Stopwatch.StartNew();
        var directory = Path.Combine(_worker.Value.WorkDirectory, "warm", Guid.NewGuid().ToString("N"));
        string baseDir = Path.Combine(directory, "base"), cacheDir = Path.Combine(directory, "cache");
        try
        {
            await _store.DownloadVersionAsync(adapterId, 0, baseDir, cancellation);
            await _store.DownloadCacheAsync(adapterId, cacheDir, cancellation);
            var adapter = PeftAdapter.Open(baseDir);
            var engine = InfluenceEngine.Load(adapter, GradientCache.Open(cacheDir), _compute.Value, null, cancellation);
            try
            {
                // The Gram now, not in the first request's solve: loaded from the store when a worker built it before, else
                // built here and kept in the store for the next process (it is derived data; the engine checks it fits).
                engine.Warm(null, cancellation);
                if (engine.SavedGramPath is { } gram)
                    await _store.UploadCacheDerivedAsync(adapterId, gram, replace: true, cancellation);
            }
            catch
            {
                engine.Dispose();
                throw;
            }
            _metrics.ObserveCacheLoad(watch.Elapsed);
            _logger.LogInformation("Loaded adapter {AdapterId}: {Rows} cached samples, P = {Parameters}, on {Device} in {Seconds:F2} s; rows {Residency} ({Reason}); Gram {Gram}",
                adapterId, engine.Cache.RowCount, engine.Cache.ParameterCount, engine.DeviceName, watch.Elapsed.TotalSeconds,
                engine.RowPlan.Residency, engine.RowPlan.Reason, engine.GramStatus);
            return new WarmAdapter(adapterId, adapter, engine, directory);
        }
        catch
        {
            LocalFolder.TryDelete(directory);
            throw;
        }
    }

    public void Dispose() => _warm.Dispose();
}
