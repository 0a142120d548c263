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
    [GeneratedRegex(AdapterStore.LocalFileNamePattern, RegexOptions.CultureInvariant)]
    private static partial Regex StorableName();

    /// <summary>
    /// The checks <c>eraser unlearn</c> and the worker apply (<see cref="InputValidation"/>): adapter and cache formats, the
    /// adapter holds every cached parameter with its shape and finite values, and every cache row (gradients and
    /// curvature) is read once to reject non-finite values. Nothing is written.
    /// </summary>
    public static CacheSummary ValidateRegistration(string adapterDir, string cacheDir, CommandIo io, CancellationToken cancellation)
    {
        var adapter = InputValidation.OpenAdapter(adapterDir);
        using var cache = InputValidation.OpenCache(cacheDir);
        InputValidation.AdapterMatchesCache(adapter, cache);
        return ScanRows(cache, $"gradient cache '{cacheDir}'", io, cancellation);
    }

    /// <summary>Reads every row of <paramref name="cache"/> (gradients and curvature) once, rejecting NaN or ±∞ with the
    /// sample's id (<see cref="InputValidation.AllRowsFinite"/>). Progress on standard error at most once a second.</summary>
    public static CacheSummary ScanRows(GradientCache cache, string label, CommandIo io, CancellationToken cancellation)
    {
        InputValidation.AllRowsFinite(cache, label, curvatureToo: true, new ProgressPrinter(io.Error), cancellation);
        return Summarize(cache);
    }

    public static CacheSummary Summarize(GradientCache cache) => new(cache.RowCount, cache.ParameterCount, cache.Parameters.Count,
        cache.StorageDType, cache.HasCurvature, cache.L2, cache.Manifest.Shards.Count);

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
