using EraserWorker.Contracts;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Transfers;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage.Versions;

/// <summary>A version to publish on top of <see cref="Parent"/>: its adapter files in a local folder and what its manifest
/// records besides the digests (which the publisher computes).</summary>
/// <param name="Parent">The head the version was computed on (its ETag decides whether it may become head).</param>
/// <param name="ParentManifest">The head's manifest, as read for the computation.</param>
/// <param name="LocalDirectory">The version's files: <c>adapter_config.json</c>, <c>adapter_model.safetensors</c>.</param>
public sealed record VersionDraft(
    AdapterHead Parent,
    AdapterManifest ParentManifest,
    string LocalDirectory,
    IReadOnlyList<AppliedRequest> Requests,
    ManifestEdits Edits,
    SolverSummary Solver,
    double UpdateNorm,
    UpdateRecord? Update = null,
    PurgeRecord? Purged = null);

/// <summary>The outcome of <see cref="AdapterStore.PublishVersionAsync"/>.</summary>
public abstract record PublishResult
{
    private PublishResult()
    {
    }

    /// <summary>The version is written and is (or was made) the head; its requests are applied in it.</summary>
    public sealed record Published(AdapterVersionRef Version, AdapterManifest Manifest) : PublishResult;

    /// <summary>Another writer moved the head first: nothing of ours is visible; reload the head and recompute.</summary>
    public sealed record HeadMoved(string Reason) : PublishResult;
}

/// <summary>
/// "Publish a version" as one protocol (SPEC §4): hash the files once, write the manifest, write the version under a claim,
/// move the head with If-Match, record the requests' markers — and handle the races of several replicas inside:
/// <list type="bullet">
/// <item>the number is already written by another writer: help a dead writer by moving the head to it if it sits on our
/// parent, then <see cref="PublishResult.HeadMoved"/>;</item>
/// <item>the number is claimed by a live writer: wait up to <c>claimWait</c>; if it finishes or gives up, HeadMoved; if
/// its claim stays (it presumably died), write under the next number nobody used, with the same parent;</item>
/// <item>our If-Match on the head fails: Published if the head is at our version all the same (another replica helped it
/// forward), else HeadMoved.</item>
/// </list>
/// </summary>
internal sealed class VersionPublisher(StoreContext context, HeadStore heads, VersionWriter writer, VersionClaims claims, RequestMarkers markers)
{
    private const int MaxNumberAttempts = 3;

    public async Task<PublishResult> PublishAsync(VersionDraft draft, TimeSpan claimWait, CancellationToken cancellationToken)
    {
        string adapterId = draft.Parent.AdapterId;
        var files = await LocalFiles.ListAsync(draft.LocalDirectory, cancellationToken).ConfigureAwait(false);
        if (files.Any(f => f.RelativePath == StoredFileNames.Manifest))
            throw new ArgumentException($"'{draft.LocalDirectory}' must not contain {StoredFileNames.Manifest}: the publisher writes it.", nameof(draft));
        int version = draft.Parent.Version + 1;
        AdapterVersionRef written;
        AdapterManifest manifest;
        for (int attempt = 1; ; attempt++)
        {
            manifest = new AdapterManifest
            {
                AdapterId = adapterId,
                Version = version,
                ParentVersion = draft.Parent.Version,
                Kind = AdapterManifest.UpdateKind,
                CreatedAt = context.Time.GetUtcNow(),
                WriterId = context.WriterId,
                Files = LocalFiles.Digests(files),
                Requests = draft.Requests,
                Edits = draft.Edits,
                Solver = draft.Solver,
                UpdateNorm = draft.UpdateNorm,
                Update = draft.Update,
                Purged = draft.Purged,
            };
            try
            {
                written = await writer.WriteAsync(adapterId, version, files, LocalFile.FromBytes(StoredFileNames.Manifest, manifest.ToUtf8Json()), cancellationToken)
                    .ConfigureAwait(false);
                break;
            }
            catch (VersionExistsException)
            {
                await HelpAdvanceAsync(draft.Parent, version, cancellationToken).ConfigureAwait(false);
                return new PublishResult.HeadMoved($"version {version} was written by another writer");
            }
            catch (VersionConflictException e) when (attempt < MaxNumberAttempts)
            {
                if (await WaitForClaimAsync(adapterId, version, draft.Parent.Version, claimWait, cancellationToken).ConfigureAwait(false) is not { } next)
                    return new PublishResult.HeadMoved($"another writer finished or gave up version {version}");
                context.Logger.LogWarning("Version {Version} of {AdapterId} stays claimed by another writer ({Reason}); writing version {Next} instead",
                    version, adapterId, e.Message, next);
                version = next;
            }
        }

        // The head is about to move past the parent: record the parent's requests (its writer may have died before it could)
        // and, for a parent of the older format, its whole request history.
        await markers.WriteAsync(adapterId, draft.Parent.Version, draft.ParentManifest.Requests.Select(r => r.RequestId), cancellationToken).ConfigureAwait(false);
        if (draft.ParentManifest.RequestHistory is { Count: > 0 } history)
            await markers.WriteAsync(adapterId, history.Select(p => (p.Key, p.Value)), cancellationToken).ConfigureAwait(false);

        if (!await heads.TryAdvanceAsync(adapterId, version, draft.Parent.ETag, cancellationToken).ConfigureAwait(false)
            && !await AppliedInAsync(adapterId, manifest, cancellationToken).ConfigureAwait(false))
            return new PublishResult.HeadMoved($"the head of '{adapterId}' moved past version {draft.Parent.Version}");

        try
        {
            await markers.WriteAsync(adapterId, version, draft.Requests.Select(r => r.RequestId), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Published all the same: until the next version is written on top, the head's manifest answers for them.
            context.Logger.LogWarning(e, "Could not record the requests of {AdapterId} version {Version}; the next version records them", adapterId, version);
        }
        return new PublishResult.Published(written, manifest);
    }

    /// <summary>Another writer finished <paramref name="version"/> on top of our parent but has not moved the head (it may
    /// have crashed): move it for them, so a dead writer never blocks the adapter.</summary>
    private async Task HelpAdvanceAsync(AdapterHead parent, int version, CancellationToken cancellationToken)
    {
        var existing = await context.ReadManifestAsync(parent.AdapterId, version, cancellationToken).ConfigureAwait(false);
        if (existing?.ParentVersion == parent.Version)
            await heads.TryAdvanceAsync(parent.AdapterId, version, parent.ETag, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>True when the head is at our version, or past it with our requests recorded in it: our If-Match failed
    /// because another replica moved the head to our version for us.</summary>
    private async Task<bool> AppliedInAsync(string adapterId, AdapterManifest ours, CancellationToken cancellationToken)
    {
        var head = await heads.GetAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (head is null || head.Version < ours.Version)
            return false;
        var headManifest = await context.ReadManifestAsync(adapterId, head.Version, cancellationToken).ConfigureAwait(false);
        if (headManifest is null)
            return false;
        var ids = ours.Requests.Select(r => r.RequestId).ToList();
        var applied = await markers.FindAsync(adapterId, headManifest, ids, cancellationToken).ConfigureAwait(false);
        return ids.All(id => applied.TryGetValue(id, out int v) && v == ours.Version);
    }

    /// <summary>Waits while another writer's claim on <paramref name="version"/> is younger than <paramref name="claimWait"/>.
    /// Null when the claim went away or the version was completed meanwhile (recompute); else the next free version number
    /// (the claim is stale: its writer presumably died).</summary>
    private async Task<int?> WaitForClaimAsync(string adapterId, int version, int headVersion, TimeSpan claimWait, CancellationToken cancellationToken)
    {
        while (true)
        {
            if (await context.Blobs.GetPropertiesAsync(BlobLayout.Manifest(adapterId, version), cancellationToken).ConfigureAwait(false) is not null)
                return null;
            var (claim, _) = await claims.ReadAsync(adapterId, version, cancellationToken).ConfigureAwait(false);
            if (claim is null)
                return null;
            var left = claim.ClaimedAt + claimWait - context.Time.GetUtcNow();
            if (left <= TimeSpan.Zero)
                return await writer.NextFreeVersionAsync(adapterId, headVersion, cancellationToken).ConfigureAwait(false);
            await Task.Delay(left < TimeSpan.FromMilliseconds(500) ? left : TimeSpan.FromMilliseconds(500), context.Time, cancellationToken).ConfigureAwait(false);
        }
    }
}
