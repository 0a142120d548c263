using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;

namespace EraserWorker.Models;

/// <summary>
/// Whether the rows a model computes (from text, at the base adapter) match a gradient cache's rows: the same parameters
/// in the same order (the model's LoRA layout), built at the same adapter, and — for curvature rows — sampled labels whose
/// definition and seed the cache records (as <c>eraser cache build</c> writes them). Registration with a model and the
/// worker's text replacements both apply this one rule.
/// </summary>
public static class CacheDefinition
{
    /// <summary>Null when the rows can match, else why not.</summary>
    /// <param name="adapterSha256">SHA-256 of the adapter the rows are computed at (its <c>adapter_model.safetensors</c>).</param>
    public static string? Problem(GradientCacheManifest cache, bool hasCurvature, IReadOnlyList<ParameterSpec> layout, string adapterSha256)
    {
        if (InputValidation.ParameterDifference(layout, cache.Parameters) is { } difference)
            return $"The LoRA layout of the model and adapter is not the gradient cache's parameter list ({difference.Replace("it has", "the layout has").Replace("its parameter", "the layout's parameter")}), " +
                   "so rows computed from text could not match the cache's.";
        var extra = cache.Extra;
        if (extra["adapterSha256"] is JsonValue a && a.TryGetValue(out string? sha) && !string.Equals(sha, adapterSha256, StringComparison.OrdinalIgnoreCase))
            return $"The gradient cache was built at another adapter (its cache.json records adapterSha256 {sha}; the adapter's is {adapterSha256}).";
        if (hasCurvature && (!(extra["curvature"] is JsonValue c && c.TryGetValue(out string? definition) && definition.StartsWith("sampled", StringComparison.Ordinal))
                             || Seed(cache) is null))
            return "The gradient cache's curvature rows do not record their definition and seed (cache.json needs \"curvature\": \"sampled…\" and \"seed\", " +
                   "as 'eraser cache build' writes), so rows computed from text could not match them.";
        return null;
    }

    /// <summary>The seed of the sampled labels the cache records, or null.</summary>
    public static ulong? Seed(GradientCacheManifest cache)
    {
        var extra = cache.Extra;
        return extra["seed"] is JsonValue v && v.TryGetValue(out ulong seed) ? seed
            : extra["seed"] is JsonValue d && d.TryGetValue(out double x) && x >= 0 && x == Math.Floor(x) && x < 1.8e19 ? (ulong)x
            : null;
    }
}
