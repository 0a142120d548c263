using System.Security.Cryptography;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;

namespace EraserWorker.Storage.Transfers;

/// <summary>A file to upload: on disk or in memory, with its size and SHA-256 (computed once, when listed).</summary>
internal sealed record LocalFile(string RelativePath, string? FullPath, byte[]? Bytes, long Length, string Sha256)
{
    public static LocalFile FromBytes(string relativePath, byte[] bytes) =>
        new(relativePath, null, bytes, bytes.Length, Convert.ToHexStringLower(SHA256.HashData(bytes)));

    public ManifestFile Digest => new(Sha256, Length);

    public Stream Open() => Bytes is not null
        ? new MemoryStream(Bytes, writable: false)
        : new FileStream(FullPath!, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
}

/// <summary>Listing and hashing of the local folders the store uploads.</summary>
internal static class LocalFiles
{
    /// <summary>Every file below <paramref name="dir"/> (relative paths with '/', ordinal order), each hashed once. A name
    /// that cannot be stored (<see cref="BlobLayout.LocalFileNamePattern"/>) throws <see cref="ArgumentException"/>.</summary>
    public static async Task<List<LocalFile>> ListAsync(string dir, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dir);
        string root = Path.GetFullPath(dir);
        if (!Directory.Exists(root))
            throw new DirectoryNotFoundException($"Folder '{dir}' does not exist.");
        var result = new List<LocalFile>();
        foreach (var path in Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }))
        {
            string relative = Path.GetRelativePath(root, path).Replace(Path.DirectorySeparatorChar, '/');
            if (!relative.Split('/').All(s => BlobLayout.LocalFileName().IsMatch(s)))
                throw new ArgumentException($"File '{relative}' in '{dir}' has a name that cannot be stored (each path segment must match {BlobLayout.LocalFileNamePattern}).", nameof(dir));
            var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
            await using (stream.ConfigureAwait(false))
            {
                byte[] hash = await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false);
                result.Add(new LocalFile(relative, path, null, stream.Length, Convert.ToHexStringLower(hash)));
            }
        }
        result.Sort((a, b) => string.CompareOrdinal(a.RelativePath, b.RelativePath));
        return result;
    }

    /// <summary>One file, hashed (its relative path is its file name).</summary>
    public static async Task<LocalFile> OneAsync(string path, CancellationToken cancellationToken)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"File '{path}' does not exist.", path);
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        await using (stream.ConfigureAwait(false))
        {
            byte[] hash = await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false);
            return new LocalFile(Path.GetFileName(path), Path.GetFullPath(path), null, stream.Length, Convert.ToHexStringLower(hash));
        }
    }

    public static LocalFile Require(IReadOnlyList<LocalFile> files, string relativePath, string dir) =>
        files.FirstOrDefault(f => f.RelativePath == relativePath)
        ?? throw new ArgumentException($"Folder '{dir}' has no {relativePath}.", nameof(dir));

    public static Dictionary<string, ManifestFile> Digests(IEnumerable<LocalFile> files) =>
        files.ToDictionary(f => f.RelativePath, f => f.Digest, StringComparer.Ordinal);

    /// <summary>A digest of a set of files (path and hash of each): two writers with this fingerprint write the same bytes.</summary>
    public static string Fingerprint(IEnumerable<(string Path, string Sha256)> files)
    {
        var text = new System.Text.StringBuilder();
        foreach (var (path, sha) in files.OrderBy(f => f.Path, StringComparer.Ordinal))
            text.Append(path).Append(':').Append(sha).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text.ToString())));
    }
}
