namespace EraserWorker.Core.Formats.KroneckerFactors;

/// <summary>Helpers that build the <c>InvalidCache</c> errors of an <c>eraser.kfac/v1</c> folder.</summary>
internal static class KfacErrors
{
    public static GradientCaches.GradientCacheException Invalid(string directory, string problem) =>
        new($"EK-FAC factors '{directory}': {problem}");
}
