using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Transfers;

namespace EraserWorker.Storage.Versions;

/// <summary>
/// <c>head.json</c>: an adapter's current version. Created once at registration (If-None-Match) and moved only with
/// If-Match on the ETag that was read, so concurrent writers keep one linear history (SPEC §4).
/// </summary>
internal sealed class HeadStore(StoreContext context)
{
    public async Task<bool> ExistsAsync(string adapterId, CancellationToken cancellationToken) =>
        await context.Blobs.GetPropertiesAsync(BlobLayout.Head(adapterId), cancellationToken).ConfigureAwait(false) is not null;

    public async Task<AdapterHead?> GetAsync(string adapterId, CancellationToken cancellationToken)
    {
        var (node, etag) = await context.ReadJsonAsync(BlobLayout.Head(adapterId), cancellationToken).ConfigureAwait(false);
        if (node is null)
            return null;
        try
        {
            string id = node["adapterId"]!.GetValue<string>();
            int version = node["version"]!.GetValue<int>();
            var updatedAt = node["updatedAt"]!.GetValue<DateTimeOffset>();
            if (id != adapterId || version is < 0 or > BlobLayout.MaxVersion)
                throw new InvalidDataException($"head.json of adapter '{adapterId}' names adapter '{id}', version {version}.");
            return new AdapterHead(adapterId, version, etag!, updatedAt);
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"head.json of adapter '{adapterId}' is malformed.", e);
        }
    }

    /// <summary>Creates the head at version 0; <see cref="BlobConditionFailedException"/> when it exists.</summary>
    public Task CreateAsync(string adapterId, CancellationToken cancellationToken) =>
        context.UploadJsonAsync(BlobLayout.Head(adapterId), Json(adapterId, 0), BlobCondition.CreateOnly, cancellationToken);

    /// <summary>Moves the head to a complete version if it is still at <paramref name="etag"/>; false when another writer
    /// moved it first. <see cref="VersionNotFoundException"/> if the version is not complete.</summary>
    public async Task<bool> TryAdvanceAsync(string adapterId, int newVersion, string etag, CancellationToken cancellationToken)
    {
        BlobLayout.CheckVersion(newVersion, 1);
        ArgumentException.ThrowIfNullOrEmpty(etag);
        if (await context.Blobs.GetPropertiesAsync(BlobLayout.Manifest(adapterId, newVersion), cancellationToken).ConfigureAwait(false) is null)
            throw new VersionNotFoundException(adapterId, newVersion);
        try
        {
            await context.UploadJsonAsync(BlobLayout.Head(adapterId), Json(adapterId, newVersion), BlobCondition.IfMatch(etag), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (BlobConditionFailedException)
        {
            return false;
        }
    }

    /// <summary>Registered adapters (those with a head), in ordinal order.</summary>
    public async IAsyncEnumerable<string> ListAdaptersAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        string suffix = "/" + StoredFileNames.Head;
        await foreach (var name in context.Blobs.ListAsync("adapters/", cancellationToken).ConfigureAwait(false))
        {
            if (!name.EndsWith(suffix, StringComparison.Ordinal))
                continue;
            string id = name["adapters/".Length..^suffix.Length];
            if (BlobLayout.IsStorableAdapterId(id))
                yield return id;
        }
    }

    private JsonObject Json(string adapterId, int version) => new()
    {
        ["adapterId"] = adapterId,
        ["version"] = version,
        ["updatedAt"] = context.Time.GetUtcNow(),
    };
}
