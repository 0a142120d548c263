using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using Microsoft.Extensions.Logging;

namespace EraserWorker.Storage.Transfers;

/// <summary>
/// The training texts registered with an adapter (<c>eraser adapters register --training-data</c>): one JSONL file, one
/// sample a line (<c>{"id", …}</c>), kept content-addressed under <c>training/</c> —
/// <c>training/samples-&lt;sha256&gt;.jsonl</c> — and named by <c>training/index.json</c> = <c>{"file", "sha256", "bytes"}</c>,
/// which is replaced only with If-Match. Downloads are verified against the index's digest.
/// <para>
/// When the removal of samples is published their lines are deleted from the store (an erased person's text must not
/// stay there): the file is rewritten without them under its new digest, the index moved to it with If-Match (a
/// concurrent rewrite is re-read and redone), and the old file deleted. A rewrite interrupted after the index moved leaves
/// an unreferenced old file; the next purge deletes every unreferenced file.
/// </para>
/// </summary>
internal sealed class TrainingTexts(StoreContext context)
{
    public const string IndexFileName = "index.json";

    private static string FileNameOf(string sha256) => $"samples-{sha256}.jsonl";

    /// <summary>Uploads the registration's training file (create-only) and its index; returns the digest for the base
    /// manifest.</summary>
    public async Task<ManifestFile> RegisterAsync(string adapterId, LocalFile file, Func<Exception?, Exception> conflict, CancellationToken cancellationToken)
    {
        string prefix = BlobLayout.Training(adapterId);
        await context.PutReplacingLeftoverAsync(prefix + FileNameOf(file.Sha256), file with { RelativePath = FileNameOf(file.Sha256) }, conflict, cancellationToken)
            .ConfigureAwait(false);
        var index = new JsonObject { ["file"] = FileNameOf(file.Sha256), ["sha256"] = file.Sha256, ["bytes"] = file.Length };
        await context.PutReplacingLeftoverAsync(prefix + IndexFileName, LocalFile.FromBytes(IndexFileName, StoreContext.JsonBytes(index)), conflict, cancellationToken)
            .ConfigureAwait(false);
        return file.Digest;
    }

    /// <summary>Downloads the current training file to <paramref name="localFile"/>, verified; false when the adapter was
    /// registered without training texts.</summary>
    public async Task<bool> DownloadAsync(string adapterId, string localFile, CancellationToken cancellationToken)
    {
        var (index, _) = await ReadIndexAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (index is null)
            return false;
        string sha = await context.DownloadFileAsync(BlobLayout.Training(adapterId) + index.File, localFile, cancellationToken).ConfigureAwait(false)
            ?? throw new InvalidDataException($"The training texts of adapter '{adapterId}' ({index.File}) are named by their index but missing.");
        if (!string.Equals(sha, index.Sha256, StringComparison.OrdinalIgnoreCase))
        {
            File.Delete(localFile);
            throw new InvalidDataException($"The training texts of adapter '{adapterId}' have SHA-256 {sha}, but their index says {index.Sha256}.");
        }
        return true;
    }

    /// <summary>Deletes the lines of <paramref name="sampleIds"/> from the stored training texts. Returns the ids whose texts
    /// are now absent from the store (all of <paramref name="sampleIds"/>, whether this call or an earlier one deleted them)
    /// and the digest of the file now stored, or null when the adapter has no training texts. Idempotent.</summary>
    public async Task<PurgeRecord?> PurgeAsync(string adapterId, IReadOnlyCollection<string> sampleIds, CancellationToken cancellationToken)
    {
        string prefix = BlobLayout.Training(adapterId);
        var wanted = sampleIds.ToHashSet(StringComparer.Ordinal);
        for (int attempt = 1; ; attempt++)
        {
            var (index, etag) = await ReadIndexAsync(adapterId, cancellationToken).ConfigureAwait(false);
            if (index is null)
                return null;
            var bytes = await context.ReadBytesAsync(prefix + index.File, cancellationToken).ConfigureAwait(false)
                ?? throw new InvalidDataException($"The training texts of adapter '{adapterId}' ({index.File}) are named by their index but missing.");
            string sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
            if (!string.Equals(sha, index.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"The training texts of adapter '{adapterId}' have SHA-256 {sha}, but their index says {index.Sha256}.");

            var absent = wanted.Order(StringComparer.Ordinal).ToList();
            var (kept, purged) = Without(bytes, wanted, adapterId);
            if (purged.Count == 0)
            {
                await DeleteUnreferencedAsync(adapterId, index.File, cancellationToken).ConfigureAwait(false);
                return new PurgeRecord(absent, index.Sha256);
            }
            var file = LocalFile.FromBytes(FileNameOf(Convert.ToHexStringLower(SHA256.HashData(kept))), kept);
            try
            {
                await context.UploadFileAsync(prefix + file.RelativePath, file, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException)
            {
                // Content-addressed: a concurrent purge of the same ids wrote the very same bytes.
            }
            var next = new JsonObject { ["file"] = file.RelativePath, ["sha256"] = file.Sha256, ["bytes"] = file.Length };
            try
            {
                await context.UploadJsonAsync(prefix + IndexFileName, next, BlobCondition.IfMatch(etag!), cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException) when (attempt < 10)
            {
                continue; // another writer rewrote the texts meanwhile: start again from theirs
            }
            await DeleteUnreferencedAsync(adapterId, file.RelativePath, cancellationToken).ConfigureAwait(false);
            context.Logger.LogInformation("Purged the training texts of {Count} sample(s) of adapter {AdapterId}", purged.Count, adapterId);
            return new PurgeRecord(absent, file.Sha256);
        }
    }

    /// <summary>The file's lines without those of <paramref name="ids"/> (compared by the <c>id</c> member), and the ids
    /// whose lines were removed, in file order.</summary>
    private static (byte[] Kept, List<string> Purged) Without(byte[] bytes, HashSet<string> ids, string adapterId)
    {
        var kept = new StringBuilder();
        var purged = new List<string>();
        foreach (var line in Encoding.UTF8.GetString(bytes).Split('\n'))
        {
            if (line.Length == 0)
                continue;
            string? id;
            try
            {
                id = JsonNode.Parse(line)?["id"]?.GetValue<string>();
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new InvalidDataException($"The training texts of adapter '{adapterId}' have a line that is not a sample: {e.Message}", e);
            }
            if (id is not null && ids.Contains(id))
                purged.Add(id);
            else
                kept.Append(line).Append('\n');
        }
        return (Encoding.UTF8.GetBytes(kept.ToString()), purged);
    }

    private async Task DeleteUnreferencedAsync(string adapterId, string current, CancellationToken cancellationToken)
    {
        string prefix = BlobLayout.Training(adapterId);
        var stale = new List<string>();
        await foreach (var name in context.Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
        {
            string rest = name[prefix.Length..];
            if (rest != IndexFileName && rest != current)
                stale.Add(name);
        }
        foreach (var name in stale)
            await context.Blobs.DeleteAsync(name, cancellationToken).ConfigureAwait(false);
    }

    private sealed record Index(string File, string Sha256);

    private async Task<(Index? Index, string? ETag)> ReadIndexAsync(string adapterId, CancellationToken cancellationToken)
    {
        var (node, etag) = await context.ReadJsonAsync(BlobLayout.Training(adapterId) + IndexFileName, cancellationToken).ConfigureAwait(false);
        if (node is null)
            return (null, null);
        try
        {
            string file = node["file"]!.GetValue<string>();
            if (!BlobLayout.LocalFileName().IsMatch(file))
                throw new InvalidDataException($"The training index of adapter '{adapterId}' names '{file}', which cannot be a file name.");
            return (new Index(file, node["sha256"]!.GetValue<string>()), etag);
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"The training index of adapter '{adapterId}' is malformed.", e);
        }
    }
}
