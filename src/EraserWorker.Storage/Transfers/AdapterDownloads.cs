using EraserWorker.Contracts;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;

namespace EraserWorker.Storage.Transfers;

/// <summary>
/// Downloads of what a manifest lists — a version's files, the base gradient cache, the registered model — each file
/// verified against the SHA-256 the manifest records while it is written (<see cref="HashingStream"/>): a corrupted or
/// substituted blob is an <see cref="InvalidDataException"/>, never a silently wrong input.
/// </summary>
internal sealed class AdapterDownloads(StoreContext context)
{
    public async Task<AdapterVersionRef> DownloadVersionAsync(string adapterId, int version, string localDir, CancellationToken cancellationToken)
    {
        var manifest = await context.ReadManifestAsync(adapterId, version, cancellationToken).ConfigureAwait(false)
            ?? throw new VersionNotFoundException(adapterId, version);
        var hashes = await context.DownloadPrefixAsync(BlobLayout.Version(adapterId, version), localDir, cancellationToken).ConfigureAwait(false);
        foreach (var (file, sha) in hashes)
        {
            if (manifest.Files.TryGetValue(file, out var expected) && !string.Equals(expected.Sha256, sha, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"{file} of version {version} of adapter '{adapterId}' has SHA-256 {sha}, but its manifest says {expected.Sha256}.");
        }
        foreach (var listed in manifest.Files.Keys.Where(f => !hashes.ContainsKey(f)))
            throw new InvalidDataException($"Version {version} of adapter '{adapterId}' lacks {listed}, which its manifest lists.");
        if (!hashes.TryGetValue(StoredFileNames.AdapterWeights, out string? weights))
            throw new InvalidDataException($"Version {version} of adapter '{adapterId}' has no {StoredFileNames.AdapterWeights}.");
        return new AdapterVersionRef(adapterId, version, context.Blobs.UriFor(BlobLayout.Version(adapterId, version)), weights);
    }

    /// <summary>Downloads the base gradient cache: exactly the files the base manifest lists (those registration validated),
    /// each verified; a base manifest of the first format without digests downloads what is there.</summary>
    public async Task DownloadCacheAsync(string adapterId, string localDir, CancellationToken cancellationToken)
    {
        var manifest = await BaseManifestAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (manifest.CacheFiles is { Count: > 0 } listed)
        {
            await DownloadListedAsync(adapterId, BlobLayout.Cache(adapterId), listed, localDir, "gradient cache", cancellationToken).ConfigureAwait(false);
            // Derived files (the Gram a worker built) are not in the base manifest; each carries its own digest and the
            // identity of the rows it was computed from, and the engine rebuilds one that does not match.
            await context.DownloadPrefixAsync(BlobLayout.CacheDerived(adapterId), Path.Combine(localDir, BlobLayout.DerivedFolder), cancellationToken)
                .ConfigureAwait(false);
            return;
        }
        var files = await context.DownloadPrefixAsync(BlobLayout.Cache(adapterId), localDir, cancellationToken).ConfigureAwait(false);
        if (!files.ContainsKey(StoredFileNames.CacheIndex))
            throw new InvalidDataException($"The cache of adapter '{adapterId}' has no {StoredFileNames.CacheIndex}.");
    }

    /// <summary>Keeps a file derived from the cache (the Gram built by a worker) in the store, so that other replicas and a
    /// restarted worker load it instead of rebuilding it; <paramref name="replace"/> overwrites an older one (rebuilt
    /// because it no longer matched).</summary>
    public async Task UploadCacheDerivedAsync(string adapterId, string localFile, bool replace, CancellationToken cancellationToken)
    {
        string name = Path.GetFileName(localFile);
        if (!BlobLayout.LocalFileName().IsMatch(name))
            throw new ArgumentException($"'{name}' cannot be stored.", nameof(localFile));
        var file = new LocalFile(name, localFile, null, new FileInfo(localFile).Length, "");
        try
        {
            await context.UploadFileAsync(BlobLayout.CacheDerived(adapterId) + name, file, replace ? Blobs.BlobCondition.None : Blobs.BlobCondition.CreateOnly,
                cancellationToken).ConfigureAwait(false);
        }
        catch (Blobs.BlobConditionFailedException)
        {
            // Another replica kept its own, equally valid copy first.
        }
    }

    /// <summary>One file of the base gradient cache (e.g. <c>cache.json</c>, an ids file), verified; null when absent.</summary>
    public async Task<byte[]?> ReadCacheFileAsync(string adapterId, string relativePath, CancellationToken cancellationToken)
    {
        var manifest = await BaseManifestAsync(adapterId, cancellationToken).ConfigureAwait(false);
        var bytes = await context.ReadBytesAsync(BlobLayout.Cache(adapterId) + relativePath, cancellationToken).ConfigureAwait(false);
        if (bytes is not null && manifest.CacheFiles?.TryGetValue(relativePath, out var expected) == true)
        {
            string sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));
            if (!string.Equals(sha, expected.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"Cache file '{relativePath}' of adapter '{adapterId}' has SHA-256 {sha}, but the base manifest says {expected.Sha256}.");
        }
        return bytes;
    }

    /// <summary>The registered model's files (relative path → SHA-256), or null when registered without one.</summary>
    public async Task<IReadOnlyDictionary<string, string>?> GetModelFilesAsync(string adapterId, CancellationToken cancellationToken)
    {
        var manifest = await BaseManifestAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (manifest.ModelFiles is not { } listed)
            return null;
        foreach (var name in listed.Keys)
        {
            if (!name.Split('/').All(s => BlobLayout.LocalFileName().IsMatch(s)))
                throw new InvalidDataException($"The base manifest of adapter '{adapterId}' lists model file '{name}', which cannot be a local file name.");
        }
        return listed.ToDictionary(p => p.Key, p => p.Value.Sha256, StringComparer.Ordinal);
    }

    /// <summary>Downloads the registered model (false, nothing downloaded, when there is none).</summary>
    public async Task<bool> DownloadModelAsync(string adapterId, string localDir, CancellationToken cancellationToken)
    {
        var manifest = await BaseManifestAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (manifest.ModelFiles is not { } listed)
            return false;
        await DownloadListedAsync(adapterId, BlobLayout.Model(adapterId), listed, localDir, "model", cancellationToken).ConfigureAwait(false);
        return true;
    }

    /// <summary>The base (version-0) manifest; <see cref="AdapterNotFoundException"/> when the adapter is not registered.</summary>
    public async Task<AdapterManifest> BaseManifestAsync(string adapterId, CancellationToken cancellationToken)
    {
        BlobLayout.CheckAdapterId(adapterId);
        var manifest = await context.ReadManifestAsync(adapterId, 0, cancellationToken).ConfigureAwait(false);
        if (manifest is not null)
            return manifest;
        if (await context.Blobs.GetPropertiesAsync(BlobLayout.Head(adapterId), cancellationToken).ConfigureAwait(false) is null)
            throw new AdapterNotFoundException(adapterId);
        throw new InvalidDataException($"Adapter '{adapterId}' has no base manifest.");
    }

    /// <summary>Downloads exactly the listed files below <paramref name="prefix"/>, each verified against its digest.</summary>
    public async Task DownloadListedAsync(string adapterId, string prefix, IReadOnlyDictionary<string, ManifestFile> listed, string localDir,
        string what, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(localDir);
        string root = Path.GetFullPath(localDir);
        foreach (var (relative, expected) in listed)
        {
            if (!relative.Split('/').All(s => BlobLayout.LocalFileName().IsMatch(s)))
                throw new InvalidDataException($"The base manifest of adapter '{adapterId}' lists {what} file '{relative}', which cannot be a local file name.");
            string target = Path.Combine(root, relative.Replace('/', Path.DirectorySeparatorChar));
            string sha = await context.DownloadFileAsync(prefix + relative, target, cancellationToken).ConfigureAwait(false)
                ?? throw new InvalidDataException($"The {what} file '{relative}' of adapter '{adapterId}' is listed in its base manifest but missing from the store.");
            if (!string.Equals(sha, expected.Sha256, StringComparison.OrdinalIgnoreCase))
            {
                File.Delete(target);
                throw new InvalidDataException($"The {what} file '{relative}' of adapter '{adapterId}' has SHA-256 {sha}, but the base manifest says {expected.Sha256}.");
            }
        }
    }
}
