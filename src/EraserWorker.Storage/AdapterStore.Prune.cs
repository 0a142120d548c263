using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage;

/// <summary>What <see cref="AdapterStore.PruneAsync"/> found for one version number.</summary>
/// <param name="Version">The version number.</param>
/// <param name="What"><c>partial version</c> (files without a manifest, or only a claim) or <c>stale claim</c> (the
/// claim of a complete version, left by a writer that died after its manifest).</param>
/// <param name="Blobs">The blobs concerned (removed, or that would be with a dry run, or kept).</param>
/// <param name="Reason">Why it was removed or kept.</param>
public sealed record PruneEntry(int Version, string What, IReadOnlyList<string> Blobs, string Reason);

/// <summary>Result of <see cref="AdapterStore.PruneAsync"/>.</summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Head">The head version when the prune started.</param>
/// <param name="DryRun">Nothing was deleted.</param>
/// <param name="Removed">Leftovers removed (with a dry run: that would be removed).</param>
/// <param name="Kept">Leftovers kept because a writer may still be working on them.</param>
public sealed record PruneReport(string AdapterId, int Head, bool DryRun, IReadOnlyList<PruneEntry> Removed, IReadOnlyList<PruneEntry> Kept);

public sealed partial class AdapterStore
{
    /// <summary>
    /// Removes what dead writers left behind under <c>versions/</c> and <c>claims/</c> of one adapter: versions without a
    /// manifest (partial: never visible, never referenced — the head only moves to complete versions) and the claims of
    /// dead writers. A partial version is removed only when no writer can still be working on it: its claim is absent or
    /// expired (<c>expiresAt</c>, written by its writer from <see cref="StorageOptions.VersionClaimTimeout"/>) and every
    /// one of its blobs is older than this store's <see cref="StorageOptions.VersionClaimTimeout"/>. The pruner then takes
    /// the claim itself (If-None-Match, or If-Match on the expired claim), so no writer can start on that number while it
    /// deletes, checks again that no manifest appeared, deletes the files and then the claim. Complete versions — on the
    /// head's chain or not — are never touched; of them only an expired claim is deleted.
    /// </summary>
    /// <param name="adapterId">The adapter (must be registered).</param>
    /// <param name="dryRun">Only report what would be removed.</param>
    /// <param name="cancellationToken">Cancellation.</param>
    public async Task<PruneReport> PruneAsync(string adapterId, bool dryRun = false, CancellationToken cancellationToken = default)
    {
        var head = await GetHeadAsync(adapterId, cancellationToken).ConfigureAwait(false) ?? throw new AdapterNotFoundException(adapterId);
        var files = new SortedDictionary<int, List<string>>();
        string versionsPrefix = AdapterPrefix(adapterId) + "versions/";
        await foreach (var name in Blobs.ListAsync(versionsPrefix, cancellationToken).ConfigureAwait(false))
        {
            if (VersionNumber(name[versionsPrefix.Length..]) is { } v)
                (files.TryGetValue(v, out var list) ? list : files[v] = []).Add(name);
        }
        var claimed = new SortedSet<int>();
        string claimsPrefix = AdapterPrefix(adapterId) + "claims/";
        await foreach (var name in Blobs.ListAsync(claimsPrefix, cancellationToken).ConfigureAwait(false))
        {
            if (VersionNumber(name[claimsPrefix.Length..]) is { } v && name == ClaimName(adapterId, v))
                claimed.Add(v);
        }

        var removed = new List<PruneEntry>();
        var kept = new List<PruneEntry>();
        foreach (int version in files.Keys.Union(claimed).Order())
        {
            var blobs = files.TryGetValue(version, out var list) ? list : [];
            string claimName = ClaimName(adapterId, version);
            var (claim, claimETag) = claimed.Contains(version) ? await ReadClaimAsync(claimName, cancellationToken).ConfigureAwait(false) : (null, null);
            bool complete = blobs.Contains(VersionPrefix(adapterId, version) + ManifestFileName);
            var now = _time.GetUtcNow();

            if (complete)
            {
                if (claim is null)
                    continue;
                if (claim.ExpiresAt > now)
                {
                    kept.Add(new PruneEntry(version, "stale claim", [claimName], $"claim of writer '{claim.WriterId}' is live until {claim.ExpiresAt:O}"));
                    continue;
                }
                if (!dryRun)
                    await Blobs.DeleteAsync(claimName, cancellationToken).ConfigureAwait(false);
                removed.Add(new PruneEntry(version, "stale claim", [claimName], $"the version is complete; claim of writer '{claim.WriterId}' expired {claim.ExpiresAt:O}"));
                continue;
            }
            if (version == 0)
            {
                kept.Add(new PruneEntry(version, "partial version", blobs, "version 0 is the registered base; never pruned"));
                continue;
            }

            var entry = new PruneEntry(version, "partial version", claim is null ? [.. blobs] : [.. blobs, claimName], "");
            if (claim is not null && claim.ExpiresAt > now)
            {
                kept.Add(entry with { Reason = $"being written: claim of writer '{claim.WriterId}' is live until {claim.ExpiresAt:O}" });
                continue;
            }
            DateTimeOffset newest = DateTimeOffset.MinValue;
            foreach (var blob in blobs)
            {
                if (await Blobs.GetPropertiesAsync(blob, cancellationToken).ConfigureAwait(false) is { } props && props.LastModified > newest)
                    newest = props.LastModified;
            }
            if (newest > now - _claimTimeout)
            {
                kept.Add(entry with { Reason = $"a file was written {newest:O}, less than the claim timeout ({_claimTimeout}) ago" });
                continue;
            }
            string why = claim is null ? "no manifest, no claim" : $"no manifest; claim of writer '{claim.WriterId}' expired {claim.ExpiresAt:O}";
            if (dryRun)
            {
                removed.Add(entry with { Reason = why });
                continue;
            }
            if (await RemovePartialVersionAsync(adapterId, version, claimETag, cancellationToken).ConfigureAwait(false) is { } deleted)
                removed.Add(entry with { Blobs = deleted, Reason = why });
            else
                kept.Add(entry with { Reason = "another writer claimed or completed it meanwhile" });
        }
        return new PruneReport(adapterId, head.Version, dryRun, removed, kept);
    }

    /// <summary>Takes the claim of a partial version (create-only, or If-Match on the expired claim's ETag), checks that
    /// the version is still incomplete, deletes its blobs and then the claim. Null when another writer got there first.</summary>
    private async Task<List<string>?> RemovePartialVersionAsync(string adapterId, int version, string? expiredClaimETag, CancellationToken cancellationToken)
    {
        string claimName = ClaimName(adapterId, version);
        var now = _time.GetUtcNow();
        var body = new JsonObject
        {
            ["adapterId"] = adapterId,
            ["version"] = version,
            ["writerId"] = WriterId,
            ["fingerprint"] = "prune",
            ["purpose"] = "prune",
            ["claimedAt"] = now,
            ["expiresAt"] = now + _claimTimeout,
        };
        string etag;
        try
        {
            etag = await UploadJsonAsync(claimName, body,
                expiredClaimETag is null ? BlobCondition.CreateOnly : BlobCondition.IfMatch(expiredClaimETag), cancellationToken).ConfigureAwait(false);
        }
        catch (BlobConditionFailedException)
        {
            return null;
        }
        var deleted = new List<string>();
        string prefix = VersionPrefix(adapterId, version);
        if (await Blobs.GetPropertiesAsync(prefix + ManifestFileName, cancellationToken).ConfigureAwait(false) is null)
        {
            var names = new List<string>();
            await foreach (var name in Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
                names.Add(name);
            foreach (var name in names)
            {
                if (await Blobs.DeleteAsync(name, cancellationToken).ConfigureAwait(false))
                    deleted.Add(name);
            }
        }
        else
        {
            deleted = null; // completed meanwhile by a writer that was paused past its claim: leave it
        }
        var props = await Blobs.GetPropertiesAsync(claimName, CancellationToken.None).ConfigureAwait(false);
        if (props is not null && props.ETag == etag)
        {
            await Blobs.DeleteAsync(claimName, CancellationToken.None).ConfigureAwait(false);
            deleted?.Add(claimName);
        }
        if (deleted is not null)
            _logger.LogWarning("Pruned partial version {Version} of adapter {AdapterId} left by a dead writer: {Count} blob(s)", version, adapterId, deleted.Count);
        return deleted;
    }

    private sealed record ClaimInfo(string? WriterId, DateTimeOffset ExpiresAt);

    private async Task<(ClaimInfo? Claim, string? ETag)> ReadClaimAsync(string name, CancellationToken cancellationToken)
    {
        JsonNode? node;
        string? etag;
        try
        {
            (node, etag) = await ReadJsonAsync(name, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException)
        {
            // Unreadable: as good as expired; take it over by its current ETag.
            return (new ClaimInfo(null, DateTimeOffset.MinValue), (await Blobs.GetPropertiesAsync(name, cancellationToken).ConfigureAwait(false))?.ETag);
        }
        if (node is null)
            return (null, null);
        DateTimeOffset expiresAt = DateTimeOffset.MinValue;
        string? writer = null;
        try
        {
            expiresAt = node["expiresAt"]?.GetValue<DateTimeOffset>() ?? DateTimeOffset.MinValue;
            writer = node["writerId"]?.GetValue<string>();
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            // A malformed claim counts as expired (as for writers).
        }
        return (new ClaimInfo(writer, expiresAt), etag);
    }

    private static int? VersionNumber(string rest) =>
        rest.Length >= 6 && int.TryParse(rest.AsSpan(0, 6), NumberStyles.None, CultureInfo.InvariantCulture, out int v) && (rest.Length == 6 || rest[6] is '/' or '.')
            ? v
            : null;
}
