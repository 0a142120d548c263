using System.Text.Json.Nodes;
using EraserWorker.Storage;

namespace EraserWorker.Tests.Infrastructure;

/// <summary>Raw views of stored blobs, for tests of the layout that write or inspect JSON the typed manifest does not
/// model (the low-level write protocol accepts any JSON object as a manifest).</summary>
public static class StoreInspection
{
    public static async Task<JsonObject?> ReadManifestJsonAsync(this AdapterStore store, string adapterId, int version)
    {
        using var buffer = new MemoryStream();
        if (await store.Blobs.DownloadAsync(BlobLayout.Manifest(adapterId, version), buffer) is null)
            return null;
        return JsonNode.Parse(buffer.ToArray()) as JsonObject;
    }
}
