using System.Text.RegularExpressions;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;

namespace EraserWorker.Cli.Operator;

/// <summary>What a validated gradient cache (or replacement set) holds.</summary>
public sealed record CacheSummary(int Samples, long Parameters, int Tensors, string DType, bool Curvature, double L2, int Shards);

/// <summary>
/// Checks of local adapter folders, gradient caches and replacement sets before anything is uploaded, and the
/// staging of exactly the files that belong to them.
/// </summary>
public static partial class LocalInputs
{
    private const int ScanFloats = 4 << 20;

    [GeneratedRegex(AdapterStore.LocalFileNamePattern, RegexOptions.CultureInvariant)]
    private static partial Regex StorableName();

    /// <summary>
    /// Opens the adapter (<see cref="PeftAdapter.Open"/>) and the cache (<see cref="GradientCache.Open"/>: format,
    /// shards, ids, duplicates, row/id counts), checks that the adapter holds every parameter the cache lists with the
    /// same shape and finite values (<see cref="PeftAdapter.ReadParameters"/>), and reads every cache row once to reject
    /// non-finite values. Nothing is written.
    /// </summary>
    public static CacheSummary ValidateRegistration(string adapterDir, string cacheDir, CommandIo io, CancellationToken cancellation)
    {
        var adapter = PeftAdapter.Open(adapterDir);
        using var cache = GradientCache.Open(cacheDir);
        double[] theta;
        try
        {
            theta = adapter.ReadParameters(cache.Parameters);
        }
        catch (InvalidDataException e)
        {
            throw new CliFailure($"the adapter does not match the gradient cache: {e.Message}", e);
        }
        int bad = Array.FindIndex(theta, v => !double.IsFinite(v));
        if (bad >= 0)
            throw new CliFailure($"adapter '{adapterDir}': parameter value #{bad} of θ is not finite.");
        return ScanRows(cache, $"gradient cache '{cacheDir}'", io, cancellation);
    }

    /// <summary>Reads every row of <paramref name="cache"/> (gradients and curvature) once: <see cref="GradientCache.ReadRows"/>
    /// throws on a NaN or ±∞ and names the sample. Progress on standard error at most once a second.</summary>
    public static CacheSummary ScanRows(GradientCache cache, string label, CommandIo io, CancellationToken cancellation)
    {
        long p = cache.ParameterCount;
        if (p > Array.MaxLength)
            throw new CliFailure($"{label}: rows of {p} values are too long to check.");
        int rowsPerChunk = (int)Math.Max(1, ScanFloats / p);
        var buffer = new float[Math.Min((long)rowsPerChunk * p, Array.MaxLength)];
        var progress = new ProgressPrinter(io.Error);
        string stage = cache.HasCurvature ? "checking rows (gradients + curvature)" : "checking rows";
        long total = cache.RowCount;
        foreach (var (first, count) in cache.Chunks(rowsPerChunk))
        {
            cancellation.ThrowIfCancellationRequested();
            cache.ReadRows(CacheMatrix.Gradients, first, count, buffer);
            if (cache.HasCurvature)
                cache.ReadRows(CacheMatrix.Curvature, first, count, buffer);
            progress.Report(new EngineProgress(stage, first + count, total));
        }
        return Summarize(cache);
    }

    public static CacheSummary Summarize(GradientCache cache) => new(cache.RowCount, cache.ParameterCount, cache.Parameters.Count,
        cache.StorageDType, cache.HasCurvature, cache.L2, cache.Manifest.Shards.Count);

    /// <summary>
    /// The first difference between a replacement set's parameter list and the registered cache's, or null when they
    /// are identical (same tensors, same shapes, same order: the rows' columns mean the same θ entries).
    /// </summary>
    public static string? CompareParameters(IReadOnlyList<ParameterSpec> set, IReadOnlyList<ParameterSpec> cache)
    {
        long pSet = ParameterSpec.TotalCount(set), pCache = ParameterSpec.TotalCount(cache);
        if (pSet != pCache)
            return $"the replacement set has P = {pSet} but the adapter's registered gradient cache has P = {pCache}";
        for (int i = 0; i < Math.Max(set.Count, cache.Count); i++)
        {
            var a = i < set.Count ? set[i] : null;
            var b = i < cache.Count ? cache[i] : null;
            if (a is null || b is null || !a.Equals(b))
                return $"the replacement set's parameter #{i} is {a?.ToString() ?? "missing"} but the registered cache's is {b?.ToString() ?? "missing"} (P = {pSet} in both)";
        }
        return null;
    }

    /// <summary>
    /// A temporary folder holding exactly the files of an adapter (its config and weights) and of a cache
    /// (<c>cache.json</c> and the shard and ids files it lists), as symbolic links (copies where links cannot be made),
    /// so that stray files beside them (a README, editor backups, a downloaded manifest) are never uploaded.
    /// </summary>
    public sealed class Staging : IDisposable
    {
        private readonly string _root = Path.Combine(Path.GetTempPath(), $"eraser-cli-{Guid.NewGuid():N}");

        public Staging() => Directory.CreateDirectory(_root);

        /// <summary>Stages the adapter files; returns the folder and the names of the files left out.</summary>
        public (string Directory, IReadOnlyList<string> Ignored) Adapter(string adapterDir) =>
            Stage("adapter", adapterDir, [PeftAdapter.ConfigFileName, PeftAdapter.WeightsFileName]);

        /// <summary>Stages the files of a base model (already validated, <see cref="ModelInputs.Validate"/>); returns the
        /// folder and the files left out.</summary>
        public (string Directory, IReadOnlyList<string> Ignored) Model(string modelDir, IReadOnlyList<string> files) =>
            Stage("model", modelDir, files);

        /// <summary>Stages a cache or replacement set (already validated); returns the folder and the files left out.</summary>
        public (string Directory, IReadOnlyList<string> Ignored) Cache(string name, string cacheDir, GradientCacheManifest manifest) =>
            Stage(name, cacheDir, [GradientCacheManifest.FileName, .. manifest.Shards.SelectMany(s => new[] { s.File, s.Ids })]);

        private (string, IReadOnlyList<string>) Stage(string name, string sourceDir, IReadOnlyList<string> files)
        {
            string source = Path.GetFullPath(sourceDir);
            string target = Path.Combine(_root, name);
            Directory.CreateDirectory(target);
            foreach (var file in files)
            {
                if (!StorableName().IsMatch(file))
                    throw new CliFailure($"'{file}' in '{sourceDir}' has a name the store cannot hold (it must match {AdapterStore.LocalFileNamePattern}).");
                string from = Path.Combine(source, file);
                if (!File.Exists(from))
                    throw new CliFailure($"'{sourceDir}' has no {file}.");
                string to = Path.Combine(target, file);
                try
                {
                    File.CreateSymbolicLink(to, from);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
                {
                    File.Copy(from, to);
                }
            }
            var wanted = files.ToHashSet(StringComparer.Ordinal);
            var ignored = Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories)
                .Select(f => Path.GetRelativePath(source, f).Replace(Path.DirectorySeparatorChar, '/'))
                .Where(f => !wanted.Contains(f))
                .Order(StringComparer.Ordinal)
                .ToList();
            return (target, ignored);
        }

        public void Dispose()
        {
            try
            {
                Directory.Delete(_root, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
    }

    /// <summary>Status line for files that were left out of an upload.</summary>
    public static void ReportIgnored(CommandIo io, string what, IReadOnlyList<string> ignored)
    {
        if (ignored.Count == 0)
            return;
        string list = string.Join(", ", ignored.Take(5)) + (ignored.Count > 5 ? $", … ({ignored.Count - 5} more)" : "");
        io.Status($"Not uploading {ignored.Count} other file(s) of the {what} folder: {list}");
    }
}
