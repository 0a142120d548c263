namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>Which per-sample rows of a gradient cache to read.</summary>
public enum CacheMatrix
{
    /// <summary>The loss gradients gᵢ (tensor <c>gradients</c>).</summary>
    Gradients,

    /// <summary>The curvature factors cᵢ (tensor <c>curvature</c>). When a cache has no curvature rows, reading them
    /// returns the gradients instead: SPEC §1, "without curvature rows, cᵢ = gᵢ" (empirical Fisher).</summary>
    Curvature,
}
