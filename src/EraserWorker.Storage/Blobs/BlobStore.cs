namespace EraserWorker.Storage.Blobs;

/// <summary>
/// A flat namespace of immutable-or-conditionally-replaced blobs, named with <c>/</c>-separated paths
/// (Azure Blob semantics). Implemented by <see cref="FileSystemBlobStore"/> and <see cref="AzureBlobStore"/>.
/// Uploads are all-or-nothing: a reader never sees a partly written blob.
/// </summary>
public interface IBlobStore
{
    /// <summary>Creates what the store needs (the container, the root folder); idempotent. Every other
    /// operation also does it on first use.</summary>
    Task InitializeAsync(CancellationToken cancellationToken = default);

    /// <summary>Length, ETag and modification time of a blob, or null when it does not exist.</summary>
    Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>Copies a blob into <paramref name="destination"/>; null (nothing written) when it does not
    /// exist. The returned ETag is the one of the bytes written.</summary>
    Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default);

    /// <summary>Writes a blob from <paramref name="content"/> (read to its end) if <paramref name="condition"/>
    /// holds, atomically; returns the new ETag. Throws <see cref="BlobConditionFailedException"/> when the
    /// condition does not hold (nothing is written).</summary>
    Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default);

    /// <summary>Names of the blobs starting with <paramref name="prefix"/> (a plain string prefix, usually
    /// ending with <c>/</c>), in ordinal order.</summary>
    IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default);

    /// <summary>Deletes a blob; false when it did not exist.</summary>
    Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>True when the store answers (and its container / root folder exists or could be created).
    /// Never throws (except on cancellation).</summary>
    Task<bool> IsReachableAsync(CancellationToken cancellationToken = default);

    /// <summary>A displayable absolute URI of a blob, or of a "folder" when <paramref name="name"/> ends with
    /// <c>/</c>: <c>file:///…</c> for a folder store, the blob URL for Azure.</summary>
    string UriFor(string name);
}

/// <summary>Properties of a stored blob.</summary>
/// <param name="Name">The blob name.</param>
/// <param name="Length">Size in bytes.</param>
/// <param name="ETag">Opaque version tag, usable with <see cref="BlobCondition.IfMatch"/>.</param>
/// <param name="LastModified">Last write time.</param>
public sealed record BlobItem(string Name, long Length, string ETag, DateTimeOffset LastModified);

/// <summary>Result of <see cref="IBlobStore.DownloadAsync"/>.</summary>
/// <param name="Name">The blob name.</param>
/// <param name="Length">Bytes written to the destination.</param>
/// <param name="ETag">ETag of the downloaded content.</param>
public sealed record BlobDownload(string Name, long Length, string ETag);

/// <summary>The kinds of <see cref="BlobCondition"/>.</summary>
public enum BlobConditionKind
{
    /// <summary>Unconditional write (create or replace).</summary>
    None = 0,

    /// <summary>Create only: fails if the blob exists (<c>If-None-Match: *</c>).</summary>
    IfNoneMatchAny = 1,

    /// <summary>Replace only this version: fails if the blob is missing or its ETag differs (<c>If-Match</c>).</summary>
    IfMatch = 2,
}

/// <summary>Precondition of <see cref="IBlobStore.UploadAsync"/>.</summary>
public readonly record struct BlobCondition
{
    private BlobCondition(BlobConditionKind kind, string? etag)
    {
        Kind = kind;
        ETag = etag;
    }

    /// <summary>The kind of condition.</summary>
    public BlobConditionKind Kind { get; }

    /// <summary>The ETag of an <see cref="BlobConditionKind.IfMatch"/> condition; "*" for
    /// <see cref="BlobConditionKind.IfNoneMatchAny"/>; null otherwise.</summary>
    public string? ETag { get; }

    /// <summary>No condition.</summary>
    public static BlobCondition None => default;

    /// <summary>Create only (<c>If-None-Match: *</c>).</summary>
    public static BlobCondition CreateOnly { get; } = new(BlobConditionKind.IfNoneMatchAny, "*");

    /// <summary><c>If-None-Match</c>; only <c>"*"</c> (create only) is supported.</summary>
    public static BlobCondition IfNoneMatch(string etag) =>
        etag == "*" ? CreateOnly : throw new ArgumentException("Only If-None-Match \"*\" (create only) is supported.", nameof(etag));

    /// <summary><c>If-Match</c>: replace the blob only while its ETag is <paramref name="etag"/>.</summary>
    public static BlobCondition IfMatch(string etag)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(etag);
        return etag == "*"
            ? throw new ArgumentException("If-Match \"*\" is not supported; use an ETag.", nameof(etag))
            : new BlobCondition(BlobConditionKind.IfMatch, etag);
    }

    /// <inheritdoc />
    public override string ToString() => Kind switch
    {
        BlobConditionKind.IfNoneMatchAny => "If-None-Match: *",
        BlobConditionKind.IfMatch => $"If-Match: {ETag}",
        _ => "unconditional",
    };
}

/// <summary>A conditional write found its condition false (the blob exists, is missing, or changed).</summary>
public sealed class BlobConditionFailedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public BlobConditionFailedException(string blobName, BlobCondition condition, Exception? inner = null)
        : base($"Condition '{condition}' failed for blob '{blobName}'.", inner)
    {
        BlobName = blobName;
        Condition = condition;
    }

    /// <summary>The blob.</summary>
    public string BlobName { get; }

    /// <summary>The condition that did not hold.</summary>
    public BlobCondition Condition { get; }
}

/// <summary>Names of the directions reported to <see cref="IStorageMetrics.BytesTransferred"/>.</summary>
public static class StorageDirections
{
    /// <summary>Bytes written to the store.</summary>
    public const string Upload = "upload";

    /// <summary>Bytes read from the store.</summary>
    public const string Download = "download";
}

/// <summary>
/// Callback for the bytes a blob store moves; the worker host implements it (e.g. a Prometheus counter
/// <c>eraser_storage_bytes_total{direction}</c>). Called once per blob operation, from any thread.
/// </summary>
public interface IStorageMetrics
{
    /// <summary>Reports <paramref name="bytes"/> moved in <paramref name="direction"/>
    /// (<see cref="StorageDirections.Upload"/> or <see cref="StorageDirections.Download"/>).</summary>
    void BytesTransferred(string direction, long bytes);
}

/// <summary>The default <see cref="IStorageMetrics"/>: does nothing.</summary>
public sealed class NullStorageMetrics : IStorageMetrics
{
    /// <summary>The shared instance.</summary>
    public static NullStorageMetrics Instance { get; } = new();

    /// <inheritdoc />
    public void BytesTransferred(string direction, long bytes)
    {
    }
}

/// <summary>Rules for blob names accepted by the <see cref="IBlobStore"/> implementations.</summary>
public static class BlobNames
{
    /// <summary>Longest accepted blob name (Azure's limit).</summary>
    public const int MaxLength = 1024;

    /// <summary>First segment reserved for the folder store's own files (locks, temporary files).</summary>
    public const string ReservedRoot = ".eraser";

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless <paramref name="name"/> is 1–1024 characters of
    /// <c>/</c>-separated segments, none empty, <c>.</c> or <c>..</c>, without backslashes or control
    /// characters, not under <c>.eraser/</c>. With <paramref name="allowTrailingSlash"/> a final <c>/</c>
    /// (a "folder") is accepted.
    /// </summary>
    public static void Validate(string name, bool allowTrailingSlash = false, string paramName = "name")
    {
        if (!IsValid(name, allowTrailingSlash))
            throw new ArgumentException($"Invalid blob name '{name}'.", paramName);
    }

    /// <summary>See <see cref="Validate"/>.</summary>
    public static bool IsValid(string? name, bool allowTrailingSlash = false)
    {
        if (string.IsNullOrEmpty(name) || name.Length > MaxLength)
            return false;
        string body = allowTrailingSlash && name.EndsWith('/') ? name[..^1] : name;
        if (body.Length == 0)
            return false;
        foreach (char c in body)
        {
            if (c == '\\' || char.IsControl(c) || char.IsSurrogate(c))
                return false;
        }
        var segments = body.Split('/');
        if (segments[0] == ReservedRoot)
            return false;
        foreach (var segment in segments)
        {
            if (segment.Length == 0 || segment == "." || segment == "..")
                return false;
        }
        return true;
    }

    /// <summary>Validates a listing prefix: empty, or a blob name, or a blob name ending with <c>/</c>.</summary>
    public static void ValidatePrefix(string prefix, string paramName = "prefix")
    {
        ArgumentNullException.ThrowIfNull(prefix, paramName);
        if (prefix.Length == 0)
            return;
        if (!IsValid(prefix, allowTrailingSlash: true))
        {
            // A partial last segment such as "versions/00" or "a." is fine; a "." / ".." segment is not.
            int slash = prefix.LastIndexOf('/');
            string head = slash < 0 ? "" : prefix[..(slash + 1)];
            string tail = prefix[(slash + 1)..];
            bool tailOk = tail.All(c => c != '\\' && !char.IsControl(c));
            if (!(tailOk && (head.Length == 0 || IsValid(head, allowTrailingSlash: true))))
                throw new ArgumentException($"Invalid blob prefix '{prefix}'.", paramName);
        }
    }
}
