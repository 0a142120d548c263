using EraserWorker.Contracts;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The one validation of what an update reads — adapter, gradient cache, replacement sets, sample ids — shared by
/// <c>eraser unlearn</c>, <c>eraser adapters register</c>, <c>eraser replacements upload</c> and the worker, so that a
/// file refused by one is refused by all, with the same failure code (SPEC §3) and message. Every refusal is an
/// <see cref="UnlearningException"/>; nothing here writes anything.
/// <list type="bullet">
/// <item><c>InvalidCache</c>: unreadable or malformed files, an adapter without the cache's parameters (or other shapes),
/// non-finite values, a replacement set of another parameter layout than the cache.</item>
/// <item><c>UnknownSample</c>: an id that is not in the cache. <c>ReplacementMissing</c>: a replacement set without rows for
/// an id it is meant to correct.</item>
/// </list>
/// Order matters and is the same everywhere: formats and layouts first, then ids, then values — so a replacement set
/// of another layout is reported as such, not as unknown samples.
/// </summary>
public static class InputValidation
{
    /// <summary>Opens a PEFT adapter folder; a malformed one is <c>InvalidCache</c> (the stored data is unusable).</summary>
    public static PeftAdapter OpenAdapter(string directory, string label = "adapter") =>
        Guard(() => PeftAdapter.Open(directory), $"{label} '{directory}'");

    /// <summary>Opens a gradient cache or replacement set (format, shards, ids, duplicates, row/id counts).</summary>
    public static GradientCache OpenCache(string directory, string label = "gradient cache") =>
        Guard(() => GradientCache.Open(directory), $"{label} '{directory}'");

    /// <summary>θ₀: the adapter's values of every parameter the cache lists, which must exist with the same shapes and be
    /// finite.</summary>
    public static double[] AdapterMatchesCache(PeftAdapter adapter, GradientCache cache)
    {
        var theta = Guard(() => adapter.ReadParameters(cache.Parameters), "the adapter does not match the gradient cache");
        int bad = Array.FindIndex(theta, v => !double.IsFinite(v));
        if (bad >= 0)
            throw new UnlearningException(FailureCodes.InvalidCache,
                $"The adapter in '{adapter.Directory}' has a non-finite value at θ[{bad}] (in the cache's parameters).");
        return theta;
    }

    /// <summary>
    /// The first difference between a replacement set's parameter list and the cache's, or null when they are identical
    /// (same tensors, same shapes, same order: the rows' columns mean the same θ entries).
    /// </summary>
    public static string? ParameterDifference(IReadOnlyList<ParameterSpec> set, IReadOnlyList<ParameterSpec> cache)
    {
        long pSet = ParameterSpec.TotalCount(set), pCache = ParameterSpec.TotalCount(cache);
        if (pSet != pCache)
            return $"it has P = {pSet} but the adapter's gradient cache has P = {pCache}";
        for (int i = 0; i < Math.Max(set.Count, cache.Count); i++)
        {
            var a = i < set.Count ? set[i] : null;
            var b = i < cache.Count ? cache[i] : null;
            if (a is null || b is null || !a.Equals(b))
                return $"its parameter #{i} is {a?.ToString() ?? "missing"} but the gradient cache's is {b?.ToString() ?? "missing"} (P = {pSet} in both)";
        }
        return null;
    }

    /// <summary>A replacement set must list exactly the cache's parameters: <c>InvalidCache</c> otherwise.</summary>
    public static void ReplacementSetMatchesCache(GradientCache set, GradientCache cache, string label)
    {
        if (ParameterDifference(set.Parameters, cache.Parameters) is { } difference)
            throw new UnlearningException(FailureCodes.InvalidCache, $"Replacement set {label} cannot be used: {difference}.");
    }

    /// <summary>Every id must be a sample of the cache: <c>UnknownSample</c> naming up to five that are not.</summary>
    public static void SamplesKnown(IEnumerable<string> ids, GradientCache cache) => SamplesKnown(ids, id => cache.TryGetRow(id, out _));

    /// <summary>Every id must be one of <paramref name="known"/> (the registered cache's ids, read from the store).</summary>
    public static void SamplesKnown(IEnumerable<string> ids, IReadOnlySet<string> known) => SamplesKnown(ids, known.Contains);

    private static void SamplesKnown(IEnumerable<string> ids, Func<string, bool> isKnown)
    {
        var unknown = ids.Where(id => !isKnown(id)).Distinct(StringComparer.Ordinal).ToList();
        if (unknown.Count == 1)
            throw new UnlearningException(FailureCodes.UnknownSample, $"Sample {Quote(unknown[0])} is not in the gradient cache.");
        if (unknown.Count > 1)
            throw new UnlearningException(FailureCodes.UnknownSample,
                $"{unknown.Count} samples are not in the gradient cache: {string.Join(", ", unknown.Take(5).Select(Quote))}{(unknown.Count > 5 ? ", …" : "")}.");
    }

    /// <summary>The set must hold a row for every id it is to correct: <c>ReplacementMissing</c> otherwise.</summary>
    public static void ReplacementRowsPresent(IEnumerable<string> ids, GradientCache set, string label)
    {
        var missing = ids.Where(id => !set.TryGetRow(id, out _)).Take(5).ToList();
        if (missing.Count > 0)
            throw new UnlearningException(FailureCodes.ReplacementMissing,
                $"Replacement set {label} has no rows for: {string.Join(", ", missing.Select(Quote))}.");
    }

    /// <summary>Reads the gradient and curvature rows of <paramref name="ids"/> once: a NaN or ±∞ is <c>InvalidCache</c>
    /// naming the sample. For the few rows a request brings in, before its solve.</summary>
    public static void RowsFinite(GradientCache cache, IEnumerable<string> ids, string label)
    {
        foreach (var id in ids)
        {
            if (!cache.TryGetRow(id, out int row))
                continue;
            Guard(() => cache.ReadRowDouble(CacheMatrix.Gradients, row), label);
            if (cache.HasCurvature)
                Guard(() => cache.ReadRowDouble(CacheMatrix.Curvature, row), label);
        }
    }

    /// <summary>
    /// Reads every row of <paramref name="which"/> once (<see cref="CacheMatrix.Gradients"/>, and the curvature rows too
    /// when <paramref name="curvatureToo"/> and the cache has them): a NaN or ±∞ anywhere is <c>InvalidCache</c> naming
    /// the sample — also in rows that no solve of today's edits would read (SPEC §2: non-finite values are refused).
    /// Progress reports rows checked.
    /// </summary>
    public static void AllRowsFinite(GradientCache cache, string label, bool curvatureToo, IProgress<EngineProgress>? progress,
        CancellationToken cancellation)
    {
        long p = cache.ParameterCount;
        if (p > Array.MaxLength)
            throw new UnlearningException(FailureCodes.InvalidCache, $"{label}: rows of {p} values are too long to check.");
        int rowsPerChunk = (int)Math.Max(1, (4L << 20) / p);
        var buffer = new float[Math.Min((long)rowsPerChunk * p, Array.MaxLength)];
        bool curvature = curvatureToo && cache.HasCurvature;
        string stage = curvature ? "checking rows (gradients + curvature)" : "checking gradient rows";
        foreach (var (first, count) in cache.Chunks(rowsPerChunk))
        {
            cancellation.ThrowIfCancellationRequested();
            Guard(() => cache.ReadRows(CacheMatrix.Gradients, first, count, buffer), label);
            if (curvature)
                Guard(() => cache.ReadRows(CacheMatrix.Curvature, first, count, buffer), label);
            progress?.Report(new EngineProgress(stage, first + count, cache.RowCount));
        }
    }

    /// <summary>The failure code of an exception met while reading adapter or cache files: <c>InvalidCache</c> for
    /// malformed or unreadable data, the code of an <see cref="UnlearningException"/>, else null (not an input problem).</summary>
    public static string? CodeOf(Exception e) => e switch
    {
        UnlearningException u => u.Code,
        GradientCacheException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException => FailureCodes.InvalidCache,
        _ => null,
    };

    private static T Guard<T>(Func<T> read, string label)
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is not UnlearningException && CodeOf(e) is { } code)
        {
            throw new UnlearningException(code, $"{Capitalise(label)}: {e.Message}", e);
        }
    }

    private static void Guard(Action read, string label) => Guard(() =>
    {
        read();
        return 0;
    }, label);

    private static string Capitalise(string text) => text.Length == 0 ? text : char.ToUpperInvariant(text[0]) + text[1..];

    private static string Quote(string id) => $"'{(id.Length > 64 ? id[..64] + "…" : id)}'";
}
