using System.Text.Json.Nodes;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Transfers;

namespace EraserWorker.Storage.Versions;

/// <summary>
/// Which version applied a request, for redelivery detection (SPEC §3: a redelivered, already-applied request re-emits its
/// completion, never re-applies): one small marker blob per request, <c>requests/&lt;sha256(requestId)&gt;.json</c> =
/// <c>{"requestId", "version"}</c>, so the per-batch cost is one read per request, whatever the history's length.
/// <para>
/// Invariant: every request applied in a version below the head has a marker. Markers are created (If-None-Match) only
/// for published versions — after the head moved to them — so a marker never names an orphan version. A writer killed
/// between moving the head and writing the markers leaves the head's own requests without markers; they are found in the
/// head's manifest (<see cref="AdapterManifest.Requests"/>), and the next writer on that head writes their markers before
/// it moves the head past it.
/// </para>
/// </summary>
internal sealed class RequestMarkers(StoreContext context)
{
    private const int Parallelism = 16;

    /// <summary>The version that applied each of <paramref name="requestIds"/> that was applied at or below
    /// <paramref name="head"/>; absent ids were not applied.</summary>
    public async Task<Dictionary<string, int>> FindAsync(string adapterId, AdapterManifest head, IReadOnlyCollection<string> requestIds,
        CancellationToken cancellationToken)
    {
        var found = new Dictionary<string, int>(StringComparer.Ordinal);
        var inHead = head.Requests.Select(r => r.RequestId).ToHashSet(StringComparer.Ordinal);
        var lookUp = new List<string>();
        foreach (var id in requestIds.Distinct(StringComparer.Ordinal))
        {
            if (inHead.Contains(id))
                found[id] = head.Version;
            else if (head.RequestHistory is { } history && history.TryGetValue(id, out int legacy))
                found[id] = legacy; // a manifest of the older format: its history is complete up to it
            else
                lookUp.Add(id);
        }
        var markers = new (string Id, int? Version)[lookUp.Count];
        await Parallel.ForAsync(0, lookUp.Count, new ParallelOptions { MaxDegreeOfParallelism = Parallelism, CancellationToken = cancellationToken },
            async (i, token) => markers[i] = (lookUp[i], await ReadAsync(adapterId, lookUp[i], token).ConfigureAwait(false))).ConfigureAwait(false);
        foreach (var (id, version) in markers)
        {
            // A marker above the head cannot come from this chain's past (markers follow publication); ignore it.
            if (version is int v && v <= head.Version)
                found[id] = v;
        }
        return found;
    }

    /// <summary>Creates the markers of requests applied in <paramref name="version"/>; an existing marker is left alone.</summary>
    public Task WriteAsync(string adapterId, int version, IEnumerable<string> requestIds, CancellationToken cancellationToken) =>
        WriteAsync(adapterId, requestIds.Select(id => (id, version)), cancellationToken);

    public async Task WriteAsync(string adapterId, IEnumerable<(string RequestId, int Version)> applied, CancellationToken cancellationToken)
    {
        var list = applied.ToList();
        await Parallel.ForEachAsync(list, new ParallelOptions { MaxDegreeOfParallelism = Parallelism, CancellationToken = cancellationToken },
            async (item, token) =>
            {
                var body = new JsonObject { ["requestId"] = item.RequestId, ["version"] = item.Version };
                try
                {
                    await context.UploadJsonAsync(BlobLayout.RequestMarker(adapterId, item.RequestId), body, BlobCondition.CreateOnly, token).ConfigureAwait(false);
                }
                catch (BlobConditionFailedException)
                {
                    // Already recorded (a helping writer, or a redelivery that found the version).
                }
            }).ConfigureAwait(false);
    }

    /// <summary>Requests applied up to <paramref name="head"/>: the recorded markers and the head's own requests not yet
    /// recorded — or, for a head of the older format, its cumulative history. One listing: for <c>eraser adapters show</c>,
    /// not for the worker's path.</summary>
    public async Task<int> CountAsync(AdapterManifest head, CancellationToken cancellationToken)
    {
        if (head.RequestHistory is { } history)
            return history.Count;
        var names = new HashSet<string>(StringComparer.Ordinal);
        await foreach (var name in context.Blobs.ListAsync(BlobLayout.Requests(head.AdapterId), cancellationToken).ConfigureAwait(false))
            names.Add(name);
        return names.Count + head.Requests.Count(r => !names.Contains(BlobLayout.RequestMarker(head.AdapterId, r.RequestId)));
    }

    private async Task<int?> ReadAsync(string adapterId, string requestId, CancellationToken cancellationToken)
    {
        var (node, _) = await context.ReadJsonAsync(BlobLayout.RequestMarker(adapterId, requestId), cancellationToken).ConfigureAwait(false);
        if (node is null)
            return null;
        try
        {
            if (node["requestId"]?.GetValue<string>() != requestId)
                throw new InvalidDataException($"The request marker of '{requestId}' in adapter '{adapterId}' names another request.");
            return node["version"]!.GetValue<int>();
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"The request marker of '{requestId}' in adapter '{adapterId}' is malformed.", e);
        }
    }
}
