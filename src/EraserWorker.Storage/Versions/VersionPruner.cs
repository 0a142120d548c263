using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Transfers;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage.Versions;

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

/// <summary>Removes what dead writers left behind (<c>eraser adapters prune</c>).</summary>
internal sealed class VersionPruner(StoreContext context, HeadStore heads, VersionClaims claims)
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
        var head = await heads.GetAsync(adapterId, cancellationToken).ConfigureAwait(false) ?? throw new AdapterNotFoundException(adapterId);
        var files = new SortedDictionary<int, List<string>>();
        string versionsPrefix = BlobLayout.Versions(adapterId);
        await foreach (var name in context.Blobs.ListAsync(versionsPrefix, cancellationToken).ConfigureAwait(false))
        {
            if (BlobLayout.VersionNumber(name[versionsPrefix.Length..]) is { } v)
                (files.TryGetValue(v, out var list) ? list : files[v] = []).Add(name);
        }
        var claimed = new SortedSet<int>();
        string claimsPrefix = BlobLayout.Claims(adapterId);
        await foreach (var name in context.Blobs.ListAsync(claimsPrefix, cancellationToken).ConfigureAwait(false))
        {
            if (BlobLayout.VersionNumber(name[claimsPrefix.Length..]) is { } v && name == BlobLayout.Claim(adapterId, v))
                claimed.Add(v);
        }

        var removed = new List<PruneEntry>();
        var kept = new List<PruneEntry>();
        foreach (int version in files.Keys.Union(claimed).Order())
        {
            var blobs = files.TryGetValue(version, out var list) ? list : [];
            string claimName = BlobLayout.Claim(adapterId, version);
            var (claim, claimETag) = claimed.Contains(version) ? await claims.ReadAsync(adapterId, version, cancellationToken).ConfigureAwait(false) : (null, null);
            bool complete = blobs.Contains(BlobLayout.Manifest(adapterId, version));
            var now = context.Time.GetUtcNow();

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
                    await context.Blobs.DeleteAsync(claimName, cancellationToken).ConfigureAwait(false);
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
                if (await context.Blobs.GetPropertiesAsync(blob, cancellationToken).ConfigureAwait(false) is { } props && props.LastModified > newest)
                    newest = props.LastModified;
            }
            if (newest > now - context.ClaimTimeout)
            {
                kept.Add(entry with { Reason = $"a file was written {newest:O}, less than the claim timeout ({context.ClaimTimeout}) ago" });
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
        string claimName = BlobLayout.Claim(adapterId, version);
        var now = context.Time.GetUtcNow();
        var body = new JsonObject
        {
            ["adapterId"] = adapterId,
            ["version"] = version,
            ["writerId"] = context.WriterId,
            ["fingerprint"] = "prune",
            ["purpose"] = "prune",
            ["claimedAt"] = now,
            ["expiresAt"] = now + context.ClaimTimeout,
        };
        string etag;
        try
        {
            etag = await context.UploadJsonAsync(claimName, body,
                expiredClaimETag is null ? BlobCondition.CreateOnly : BlobCondition.IfMatch(expiredClaimETag), cancellationToken).ConfigureAwait(false);
        }
        catch (BlobConditionFailedException)
        {
            return null;
        }
        var deleted = new List<string>();
        string prefix = BlobLayout.Version(adapterId, version);
        if (await context.Blobs.GetPropertiesAsync(prefix + StoredFileNames.Manifest, cancellationToken).ConfigureAwait(false) is null)
        {
            var names = new List<string>();
            await foreach (var name in context.Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
                names.Add(name);
            foreach (var name in names)
            {
                if (await context.Blobs.DeleteAsync(name, cancellationToken).ConfigureAwait(false))
                    deleted.Add(name);
            }
        }
        else
        {
            deleted = null; // completed meanwhile by a writer that was paused past its claim: leave it
        }
        var props = await context.Blobs.GetPropertiesAsync(claimName, CancellationToken.None).ConfigureAwait(false);
        if (props is not null && props.ETag == etag)
        {
            await context.Blobs.DeleteAsync(claimName, CancellationToken.None).ConfigureAwait(false);
            deleted?.Add(claimName);
        }
        if (deleted is not null)
            context.Logger.LogWarning("Pruned partial version {Version} of adapter {AdapterId} left by a dead writer: {Count} blob(s)", version, adapterId, deleted.Count);
        return deleted;
    }
}
