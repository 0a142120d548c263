namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>A gradient cache (or replacement set) is malformed or holds invalid values. The message names the cache,
/// the file and the problem.</summary>
/// <remarks><see cref="InvalidDataException"/> is sealed, so this derives from <see cref="IOException"/>: handlers that
/// catch <c>IOException or InvalidDataException</c> see it. When it wraps a safetensors validation failure the
/// <see cref="InvalidDataException"/> is the inner exception.</remarks>
public sealed class GradientCacheException : IOException
{
    public GradientCacheException(string message)
        : base(message)
    {
    }

    public GradientCacheException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
