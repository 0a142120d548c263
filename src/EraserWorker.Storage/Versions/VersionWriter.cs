using System.Globalization;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Transfers;

namespace EraserWorker.Storage.Versions;

/// <summary>
/// Writes one immutable version: under a claim (<see cref="VersionClaims"/>), every file with If-None-Match (a leftover
/// of a crashed writer replaced with If-Match on its ETag), then <c>manifest.json</c> last with If-None-Match — the version
/// is complete iff its manifest exists, so no reader ever sees a partial version.
/// </summary>
internal sealed class VersionWriter(StoreContext context, VersionClaims claims)
{
    /// <summary>Errors: <see cref="VersionExistsException"/> if the manifest exists; <see cref="VersionConflictException"/>
    /// when another writer holds a live claim on the number with other files.</summary>
    public async Task<AdapterVersionRef> WriteAsync(string adapterId, int version, IReadOnlyList<LocalFile> files, LocalFile manifest,
        CancellationToken cancellationToken)
    {
        BlobLayout.CheckAdapterId(adapterId);
        BlobLayout.CheckVersion(version, 1);
        var weights = LocalFiles.Require(files, StoredFileNames.AdapterWeights, "the version");
        string prefix = BlobLayout.Version(adapterId, version);
        string manifestName = prefix + StoredFileNames.Manifest;
        if (await context.Blobs.GetPropertiesAsync(manifestName, cancellationToken).ConfigureAwait(false) is not null)
            throw new VersionExistsException(adapterId, version);

        var all = files.Append(manifest).ToList();
        var claim = await claims.AcquireAsync(adapterId, version, LocalFiles.Fingerprint(all.Select(f => (f.RelativePath, f.Sha256))), cancellationToken)
            .ConfigureAwait(false);
        bool done = false;
        try
        {
            foreach (var file in files)
                await context.PutReplacingLeftoverAsync(prefix + file.RelativePath, file,
                    e => VersionClaims.Conflict(adapterId, version, $"{file.RelativePath} changed while it was written", e), cancellationToken).ConfigureAwait(false);
            await claims.EnsureHeldAsync(claim, cancellationToken).ConfigureAwait(false);
            try
            {
                await context.UploadFileAsync(manifestName, manifest, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException e)
            {
                throw new VersionExistsException(adapterId, version, e);
            }
            done = true;
            return new AdapterVersionRef(adapterId, version, context.Blobs.UriFor(prefix), weights.Sha256);
        }
        finally
        {
            await claims.ReleaseAsync(claim, done).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A version number nobody has used yet: one more than the highest of the head, any version folder (complete or
    /// partial) and any claim. Writing there never meets leftovers or a live writer.
    /// </summary>
    public async Task<int> NextFreeVersionAsync(string adapterId, int headVersion, CancellationToken cancellationToken)
    {
        int highest = headVersion;
        foreach (var prefix in new[] { BlobLayout.Versions(adapterId), BlobLayout.Claims(adapterId) })
        {
            await foreach (var name in context.Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
            {
                string rest = name[prefix.Length..];
                if (rest.Length >= 6 && int.TryParse(rest.AsSpan(0, 6), NumberStyles.None, CultureInfo.InvariantCulture, out int v))
                    highest = Math.Max(highest, v);
            }
        }
        return highest >= BlobLayout.MaxVersion ? throw new InvalidOperationException($"Adapter '{adapterId}' has used every version number.") : highest + 1;
    }

    /// <summary>
    /// The files of a version folder prepared by hand (tests and tools): every file, with <c>manifest.json</c> checked
    /// against them — a digest it lists must match the file, and a file it lists must exist.
    /// </summary>
    public static async Task<(List<LocalFile> Files, LocalFile Manifest)> ReadFolderAsync(string dir, CancellationToken cancellationToken)
    {
        var all = await LocalFiles.ListAsync(dir, cancellationToken).ConfigureAwait(false);
        LocalFiles.Require(all, StoredFileNames.AdapterWeights, dir);
        var manifestFile = LocalFiles.Require(all, StoredFileNames.Manifest, dir);
        var files = all.Where(f => f.RelativePath != StoredFileNames.Manifest).ToList();
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllBytes(manifestFile.FullPath!));
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new ArgumentException($"{StoredFileNames.Manifest} in '{dir}' is not valid JSON: {e.Message}", nameof(dir), e);
        }
        if (node is not JsonObject manifest)
            throw new ArgumentException($"{StoredFileNames.Manifest} in '{dir}' is not a JSON object.", nameof(dir));
        if (manifest["files"] is JsonObject listed)
        {
            foreach (var (name, entry) in listed)
            {
                if (name == StoredFileNames.Manifest)
                    continue;
                var file = files.FirstOrDefault(f => f.RelativePath == name)
                    ?? throw new ArgumentException($"{StoredFileNames.Manifest} in '{dir}' lists {name}, which is not in the folder.", nameof(dir));
                string? expected = entry switch
                {
                    JsonObject o when o["sha256"] is JsonValue v && v.TryGetValue(out string? s) => s,
                    JsonValue v when v.TryGetValue(out string? s) => s,
                    _ => null,
                };
                if (expected is not null && !string.Equals(expected, file.Sha256, StringComparison.OrdinalIgnoreCase))
                    throw new ArgumentException($"{StoredFileNames.Manifest} in '{dir}' lists SHA-256 {expected} for {name}, but the file's is {file.Sha256}.", nameof(dir));
            }
        }
        return (files, manifestFile);
    }
}
