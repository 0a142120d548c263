using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage.Transfers;

/// <summary>
/// What every room of the store shares: the blob store, the writer's identity, the clock, and the few conditional
/// read/write primitives the protocols are built from (JSON blobs with their ETag, create-only uploads that replace
/// exactly one leftover of an interrupted write, verified downloads).
/// </summary>
internal sealed class StoreContext(IBlobStore blobs, string writerId, TimeSpan claimTimeout, ILogger logger, TimeProvider time)
{
    private static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public IBlobStore Blobs { get; } = blobs;
    public string WriterId { get; } = writerId;
    public TimeSpan ClaimTimeout { get; } = claimTimeout;
    public ILogger Logger { get; } = logger;
    public TimeProvider Time { get; } = time;

    public static byte[] JsonBytes(JsonNode node) => JsonSerializer.SerializeToUtf8Bytes(node, JsonOptions);

    public async Task<(JsonNode? Node, string? ETag)> ReadJsonAsync(string name, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        var download = await Blobs.DownloadAsync(name, buffer, cancellationToken).ConfigureAwait(false);
        if (download is null)
            return (null, null);
        try
        {
            return (JsonNode.Parse(buffer.ToArray()), download.ETag);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Blob '{name}' is not valid JSON.", e);
        }
    }

    public async Task<byte[]?> ReadBytesAsync(string name, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        return await Blobs.DownloadAsync(name, buffer, cancellationToken).ConfigureAwait(false) is null ? null : buffer.ToArray();
    }

    /// <summary>The manifest of a version, or null when the version is missing or incomplete.</summary>
    public async Task<AdapterManifest?> ReadManifestAsync(string adapterId, int version, CancellationToken cancellationToken)
    {
        var bytes = await ReadBytesAsync(BlobLayout.Manifest(adapterId, version), cancellationToken).ConfigureAwait(false);
        return bytes is null ? null : AdapterManifest.Parse(bytes, adapterId, version);
    }

    public async Task<string> UploadJsonAsync(string name, JsonNode node, BlobCondition condition, CancellationToken cancellationToken)
    {
        using var stream = new MemoryStream(JsonBytes(node), writable: false);
        return await Blobs.UploadAsync(name, stream, condition, cancellationToken).ConfigureAwait(false);
    }

    public async Task<string> UploadFileAsync(string name, LocalFile file, BlobCondition condition, CancellationToken cancellationToken)
    {
        var stream = file.Open();
        await using (stream.ConfigureAwait(false))
            return await Blobs.UploadAsync(name, stream, condition, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Creates a blob with If-None-Match; if a leftover exists, replaces exactly that leftover (If-Match on its
    /// ETag). Another change in between throws <paramref name="conflict"/>.</summary>
    public async Task PutReplacingLeftoverAsync(string name, LocalFile file, Func<Exception?, Exception> conflict, CancellationToken cancellationToken)
    {
        for (int attempt = 0; attempt < 3; attempt++)
        {
            try
            {
                await UploadFileAsync(name, file, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (BlobConditionFailedException)
            {
            }
            var existing = await Blobs.GetPropertiesAsync(name, cancellationToken).ConfigureAwait(false);
            if (existing is null)
                continue;
            try
            {
                await UploadFileAsync(name, file, BlobCondition.IfMatch(existing.ETag), cancellationToken).ConfigureAwait(false);
                Logger.LogInformation("Replaced leftover blob {Blob} of an interrupted write", name);
                return;
            }
            catch (BlobConditionFailedException e)
            {
                throw conflict(e);
            }
        }
        throw conflict(null);
    }

    /// <summary>Downloads one blob to <paramref name="target"/> through a temporary file (moved into place only when
    /// complete) and returns its SHA-256, or null (nothing written) when the blob does not exist.</summary>
    public async Task<string?> DownloadFileAsync(string name, string target, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        string temp = target + ".part-" + Guid.NewGuid().ToString("N");
        try
        {
            string sha;
            var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
            await using (file.ConfigureAwait(false))
            {
                using var hasher = new HashingStream(file);
                if (await Blobs.DownloadAsync(name, hasher, cancellationToken).ConfigureAwait(false) is null)
                    return null;
                sha = hasher.HexHash();
            }
            File.Move(temp, target, overwrite: true);
            return sha;
        }
        finally
        {
            if (File.Exists(temp))
                File.Delete(temp);
        }
    }

    /// <summary>Downloads every blob under <paramref name="prefix"/> into <paramref name="localDir"/>; returns relative
    /// path → SHA-256.</summary>
    public async Task<Dictionary<string, string>> DownloadPrefixAsync(string prefix, string localDir, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(localDir);
        string root = Path.GetFullPath(localDir);
        Directory.CreateDirectory(root);
        var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
        await foreach (var name in Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
        {
            string relative = name[prefix.Length..];
            if (!relative.Split('/').All(s => BlobLayout.LocalFileName().IsMatch(s)))
                throw new InvalidDataException($"Blob '{name}' has a name that cannot be a local file name.");
            string target = Path.Combine(root, relative.Replace('/', Path.DirectorySeparatorChar));
            hashes[relative] = await DownloadFileAsync(name, target, cancellationToken).ConfigureAwait(false)
                ?? throw new InvalidDataException($"Blob '{name}' disappeared while it was downloaded.");
        }
        return hashes;
    }
}
