using System.Text.Json.Nodes;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Transfers;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage.Versions;

/// <summary>A writer's claim on a version number (<c>claims/NNNNNN.json</c>), held while it writes that version.</summary>
internal sealed record Claim(string AdapterId, int Version, string Name, string Fingerprint, string ETag);

/// <summary>What a claim blob says: who holds it and until when.</summary>
internal sealed record ClaimInfo(string? WriterId, DateTimeOffset ClaimedAt, DateTimeOffset ExpiresAt);

/// <summary>
/// Version claims: before writing version N (or registering version 0) a writer creates <c>claims/NNNNNN.json</c> with
/// If-None-Match. It may take over an existing claim with If-Match when that claim has expired, is its own
/// (<see cref="StoreContext.WriterId"/>) or is for byte-identical files (same fingerprint); a live claim of another writer
/// with other files is a <see cref="VersionConflictException"/>. So a crashed writer's partial version is completed safely,
/// and two writers never interleave files of one version.
/// </summary>
internal sealed class VersionClaims(StoreContext context)
{
    public async Task<Claim> AcquireAsync(string adapterId, int version, string fingerprint, CancellationToken cancellationToken)
    {
        string name = BlobLayout.Claim(adapterId, version);
        for (int attempt = 0; ; attempt++)
        {
            var now = context.Time.GetUtcNow();
            var body = new JsonObject
            {
                ["adapterId"] = adapterId,
                ["version"] = version,
                ["writerId"] = context.WriterId,
                ["fingerprint"] = fingerprint,
                ["claimedAt"] = now,
                ["expiresAt"] = now + context.ClaimTimeout,
            };
            try
            {
                string etag = await context.UploadJsonAsync(name, body, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
                return new Claim(adapterId, version, name, fingerprint, etag);
            }
            catch (BlobConditionFailedException)
            {
            }

            var (existing, existingETag) = await context.ReadJsonAsync(name, cancellationToken).ConfigureAwait(false);
            if (existing is null)
            {
                if (attempt < 5)
                    continue; // released meanwhile
                throw Conflict(adapterId, version, "its claim keeps changing");
            }
            var info = Describe(existing);
            string? otherFingerprint = (string?)existing["fingerprint"];
            bool takeOver = info.WriterId == context.WriterId || otherFingerprint == fingerprint || info.ExpiresAt <= now;
            if (!takeOver)
                throw Conflict(adapterId, version, $"writer '{info.WriterId}' claimed it until {info.ExpiresAt:O}");
            try
            {
                string etag = await context.UploadJsonAsync(name, body, BlobCondition.IfMatch(existingETag!), cancellationToken).ConfigureAwait(false);
                if (otherFingerprint != fingerprint)
                    context.Logger.LogWarning("Took over the claim on version {Version} of adapter {AdapterId} from writer {OtherWriter} (expired {ExpiresAt:O})",
                        version, adapterId, info.WriterId, info.ExpiresAt);
                return new Claim(adapterId, version, name, fingerprint, etag);
            }
            catch (BlobConditionFailedException) when (attempt < 5)
            {
                // Changed meanwhile (released or taken): look again.
            }
            catch (BlobConditionFailedException e)
            {
                throw Conflict(adapterId, version, "its claim keeps changing", e);
            }
        }
    }

    /// <summary>Throws <see cref="VersionConflictException"/> unless the claim is still ours (or for the same files).</summary>
    public async Task EnsureHeldAsync(Claim claim, CancellationToken cancellationToken)
    {
        var (current, etag) = await context.ReadJsonAsync(claim.Name, cancellationToken).ConfigureAwait(false);
        if (current is null)
            throw Conflict(claim.AdapterId, claim.Version, "our claim was removed by another writer");
        if (etag != claim.ETag && (string?)current["fingerprint"] != claim.Fingerprint)
            throw Conflict(claim.AdapterId, claim.Version, $"writer '{(string?)current["writerId"]}' took our claim over");
    }

    /// <summary>Deletes the claim if it is still ours, or whatever it is once the version is complete. Never throws: an
    /// unreleased claim expires by itself.</summary>
    public async Task ReleaseAsync(Claim claim, bool completed)
    {
        try
        {
            var props = await context.Blobs.GetPropertiesAsync(claim.Name, CancellationToken.None).ConfigureAwait(false);
            if (props is not null && (props.ETag == claim.ETag || completed))
                await context.Blobs.DeleteAsync(claim.Name, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            context.Logger.LogWarning(e, "Could not release the claim {Claim}; it expires by itself", claim.Name);
        }
    }

    /// <summary>The claim on a version number and its ETag, or (null, null) when there is none. An unreadable claim counts
    /// as expired (it can be taken over by its current ETag).</summary>
    public async Task<(ClaimInfo? Claim, string? ETag)> ReadAsync(string adapterId, int version, CancellationToken cancellationToken)
    {
        string name = BlobLayout.Claim(adapterId, version);
        JsonNode? node;
        string? etag;
        try
        {
            (node, etag) = await context.ReadJsonAsync(name, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException)
        {
            return (new ClaimInfo(null, DateTimeOffset.MinValue, DateTimeOffset.MinValue),
                (await context.Blobs.GetPropertiesAsync(name, cancellationToken).ConfigureAwait(false))?.ETag);
        }
        return node is null ? (null, null) : (Describe(node), etag);
    }

    private static ClaimInfo Describe(JsonNode node)
    {
        string? writer = null;
        DateTimeOffset claimedAt = DateTimeOffset.MinValue, expiresAt = DateTimeOffset.MinValue;
        try
        {
            writer = node["writerId"]?.GetValue<string>();
            claimedAt = node["claimedAt"]?.GetValue<DateTimeOffset>() ?? DateTimeOffset.MinValue;
            expiresAt = node["expiresAt"]?.GetValue<DateTimeOffset>() ?? DateTimeOffset.MinValue;
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            // A malformed claim counts as expired.
        }
        return new ClaimInfo(writer, claimedAt, expiresAt);
    }

    public static VersionConflictException Conflict(string adapterId, int version, string detail, Exception? inner = null) =>
        new(adapterId, version, detail, inner);
}
