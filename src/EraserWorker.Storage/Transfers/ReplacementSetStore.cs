using System.Globalization;
using System.Security.Cryptography;
using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;

namespace EraserWorker.Storage.Transfers;

/// <summary>
/// Replacement sets (SPEC §2, §4): gradient-cache folders under <c>replacements/&lt;name&gt;/</c>, written once
/// (<c>cache.json</c> last, If-None-Match) and named by the <c>replacementsUri</c> of requests.
/// </summary>
internal sealed class ReplacementSetStore(StoreContext context)
{
    /// <summary>A fresh name: <c>r-&lt;UTC yyyyMMddTHHmmssZ&gt;-&lt;8 hex&gt;</c> (lowercase).</summary>
    public static string NewName(TimeProvider? time = null)
    {
        var now = (time ?? TimeProvider.System).GetUtcNow();
        return "r-" + now.ToString("yyyyMMdd't'HHmmss'z'", CultureInfo.InvariantCulture) + "-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    }

    public async Task<string> UploadAsync(string adapterId, string name, string localCacheDir, CancellationToken cancellationToken)
    {
        string prefix = BlobLayout.Replacements(adapterId, name);
        var files = await LocalFiles.ListAsync(localCacheDir, cancellationToken).ConfigureAwait(false);
        var index = LocalFiles.Require(files, StoredFileNames.CacheIndex, localCacheDir);
        if (await context.Blobs.GetPropertiesAsync(BlobLayout.Head(adapterId), cancellationToken).ConfigureAwait(false) is null)
            throw new AdapterNotFoundException(adapterId);
        if (await context.Blobs.GetPropertiesAsync(prefix + StoredFileNames.CacheIndex, cancellationToken).ConfigureAwait(false) is not null)
            throw new ReplacementsExistException(adapterId, name);
        foreach (var file in files.Where(f => f != index))
            await context.PutReplacingLeftoverAsync(prefix + file.RelativePath, file, e => new ReplacementsExistException(adapterId, name, e), cancellationToken).ConfigureAwait(false);
        try
        {
            await context.UploadFileAsync(prefix + StoredFileNames.CacheIndex, index, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
        }
        catch (BlobConditionFailedException e)
        {
            throw new ReplacementsExistException(adapterId, name, e);
        }
        return RequestValidation.FormatReplacementsUri(adapterId, name);
    }

    /// <summary>True when a complete set (its <c>cache.json</c>) exists under that name.</summary>
    public async Task<bool> ExistsAsync(string adapterId, string name, CancellationToken cancellationToken) =>
        await context.Blobs.GetPropertiesAsync(BlobLayout.Replacements(adapterId, name) + StoredFileNames.CacheIndex, cancellationToken).ConfigureAwait(false) is not null;

    public async Task DownloadAsync(string adapterId, string replacementsUri, string localDir, CancellationToken cancellationToken)
    {
        BlobLayout.CheckAdapterId(adapterId);
        if (!RequestValidation.TryParseReplacementsUri(replacementsUri, out string uriAdapter, out string name))
            throw new ArgumentException($"'{replacementsUri}' is not a replacements URI ({RequestValidation.ReplacementsUriPrefix}<adapterId>{RequestValidation.ReplacementsUriInfix}<name>).", nameof(replacementsUri));
        if (uriAdapter != adapterId)
            throw new ArgumentException($"Replacements URI '{replacementsUri}' belongs to adapter '{uriAdapter}', not '{adapterId}'.", nameof(replacementsUri));
        string prefix = BlobLayout.Replacements(adapterId, name);
        if (await context.Blobs.GetPropertiesAsync(prefix + StoredFileNames.CacheIndex, cancellationToken).ConfigureAwait(false) is null)
            throw new ReplacementsNotFoundException(adapterId, replacementsUri);
        await context.DownloadPrefixAsync(prefix, localDir, cancellationToken).ConfigureAwait(false);
    }
}
