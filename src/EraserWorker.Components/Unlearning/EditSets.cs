using EraserWorker.Contracts;
using EraserWorker.Core.Influence;
using EraserWorker.Storage.Manifests;

namespace EraserWorker.Components.Unlearning;

/// <summary>The cumulative edit set (SPEC §1) between its stored form in a manifest and the engine's <see cref="EditSet"/>,
/// and the effect of a request on it.</summary>
public static class EditSets
{
    public static EditSet From(ManifestEdits stored) => EditSet.From(stored.Removed, stored.Replaced);

    public static ManifestEdits ToManifest(EditSet edits) => new()
    {
        Removed = edits.Removed.ToList(),
        Replaced = edits.Replaced.ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal),
    };

    /// <summary>The edit set after <paramref name="request"/>: its samples removed, or replaced by its replacement set.</summary>
    public static EditSet Apply(EditSet edits, UnlearningRequested request) =>
        request.Task == UnlearningTasks.Remove ? edits.Remove(request.SampleIds) : edits.Replace(request.SampleIds, request.ReplacementsUri!);

    public static EditSet Apply(EditSet edits, IEnumerable<PendingRequest> requests) => requests.Aggregate(edits, (set, r) => Apply(set, r.Request));
}
