using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Storage.Manifests;

namespace EraserWorker.Components.Unlearning;

/// <summary>
/// Requests that were already applied (SPEC §3: delivery is at least once): their completion is re-emitted, identical in
/// content, and the versions that applied them are announced again — the worker that applied them may have died between
/// moving the head and publishing (consumers dedupe announcements by adapterId and version). Never re-applied.
/// </summary>
public sealed class Redeliveries(AdapterStore store)
{
    public async Task<BatchOutcome> ReemitAsync(IReadOnlyList<(UnlearningRequested Request, int Version)> applied, AdapterManifest head,
        CancellationToken cancellation)
    {
        var manifests = new Dictionary<int, AdapterManifest> { [head.Version] = head };
        var completed = new List<UnlearningCompleted>();
        foreach (var (request, version) in applied)
        {
            var manifest = await ManifestAsync(head.AdapterId, version, manifests, cancellation);
            var reference = store.VersionRef(manifest);
            completed.Add(new UnlearningCompleted(request.RequestId, request.AdapterId, version, reference.Uri, reference.Sha256,
                manifest.CreatedAt, manifest.Solver ?? new SolverSummary("none", 0, 0, 0, 0)));
        }
        var announced = new List<AdapterVersionPublished>();
        foreach (int version in applied.Select(a => a.Version).Distinct().Order())
        {
            var manifest = manifests[version];
            var reference = store.VersionRef(manifest);
            announced.Add(new AdapterVersionPublished(head.AdapterId, version, reference.Uri, reference.Sha256,
                manifest.Requests.Select(r => r.RequestId).ToList()));
        }
        return new BatchOutcome(completed, [], announced);
    }

    /// <summary>Each version's manifest is read once per batch.</summary>
    private async Task<AdapterManifest> ManifestAsync(string adapterId, int version, Dictionary<int, AdapterManifest> read, CancellationToken cancellation)
    {
        if (read.TryGetValue(version, out var manifest))
            return manifest;
        manifest = await store.ReadManifestAsync(adapterId, version, cancellation)
            ?? throw new InvalidDataException($"Version {version} of '{adapterId}' is recorded as applying a request but has no manifest.");
        read[version] = manifest;
        return manifest;
    }
}
