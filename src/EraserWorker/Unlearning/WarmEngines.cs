using System.Diagnostics;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Hosting;
using EraserWorker.Observability;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Unlearning;

/// <summary>One adapter's warm state: its base adapter on local disk, the loaded engine and opened replacement sets.</summary>
public sealed class WarmAdapter(string adapterId, PeftAdapter baseAdapter, InfluenceEngine engine, string directory) : IDisposable
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
            : throw new UnlearningException(UnlearningException.ReplacementMissing, $"Replacement set '{uri}' is not loaded.");

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
public sealed class WarmEngines(AdapterStore store, IOptions<WorkerOptions> worker, IOptions<ComputeOptions> compute,
    EraserMetrics metrics, ILogger<WarmEngines> logger) : IDisposable
{
    private readonly LinkedList<WarmAdapter> _recent = new();
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The warm state of an adapter, loading it when absent. Null when the adapter is not registered.</summary>
    public async Task<WarmAdapter?> GetAsync(string adapterId, CancellationToken cancellation)
    {
        await _gate.WaitAsync(cancellation);
        try
        {
            var node = _recent.First;
            while (node is not null && node.Value.AdapterId != adapterId)
                node = node.Next;
            if (node is not null)
            {
                _recent.Remove(node);
                _recent.AddFirst(node);
                return node.Value;
            }
            var loaded = await LoadAsync(adapterId, cancellation);
            if (loaded is null)
                return null;
            _recent.AddFirst(loaded);
            while (_recent.Count > worker.Value.MaxWarmAdapters)
            {
                var evicted = _recent.Last!.Value;
                _recent.RemoveLast();
                // Wait for a batch still using it, then release its memory.
                await evicted.Gate.WaitAsync(cancellation);
                evicted.Dispose();
                TryDelete(evicted.Directory);
                logger.LogInformation("Evicted warm adapter {AdapterId}", evicted.AdapterId);
            }
            metrics.SetCachedAdapters(_recent.Count);
            return loaded;
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<WarmAdapter?> LoadAsync(string adapterId, CancellationToken cancellation)
    {
        if (await store.GetHeadAsync(adapterId, cancellation) is null)
            return null;
        var watch = Stopwatch.StartNew();
        var directory = Path.Combine(worker.Value.WorkDirectory, "warm", Guid.NewGuid().ToString("N"));
        string baseDir = Path.Combine(directory, "base"), cacheDir = Path.Combine(directory, "cache");
        try
        {
            await store.DownloadVersionAsync(adapterId, 0, baseDir, cancellation);
            await store.DownloadCacheAsync(adapterId, cacheDir, cancellation);
            var adapter = PeftAdapter.Open(baseDir);
            var engine = InfluenceEngine.Load(adapter, GradientCache.Open(cacheDir), compute.Value, null, cancellation);
            metrics.ObserveCacheLoad(watch.Elapsed);
            logger.LogInformation("Loaded adapter {AdapterId}: {Rows} cached samples, P = {Parameters}, on {Device} in {Seconds:F2} s",
                adapterId, engine.Cache.RowCount, engine.Cache.ParameterCount, engine.DeviceName, watch.Elapsed.TotalSeconds);
            return new WarmAdapter(adapterId, adapter, engine, directory);
        }
        catch
        {
            TryDelete(directory);
            throw;
        }
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (System.IO.Directory.Exists(directory))
                System.IO.Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        foreach (var warm in _recent)
            warm.Dispose();
        _recent.Clear();
        _gate.Dispose();
    }
}
