using System.Security.Cryptography;

namespace EraserWorker.Core.Formats;

/// <summary>File digests for manifests and completion events.</summary>
public static class FileHash
{
    /// <summary>SHA-256 of a file's bytes as 64 lowercase hex digits, streamed.</summary>
    public static string Sha256OfFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
