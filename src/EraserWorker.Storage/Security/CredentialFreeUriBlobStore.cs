using EraserWorker.Storage.Blobs;

namespace EraserWorker.Storage.Security;

/// <summary>
/// Every <see cref="IBlobStore"/> the storage layer hands out (<see cref="StorageServiceCollectionExtensions.CreateBlobStore"/>):
/// the configured store, except that <see cref="IBlobStore.UriFor"/> drops any query string. With a connection string that
/// holds a SAS, the Azure SDK puts the SAS (<c>sig=…</c>) into every blob URL; those URLs are logged, printed by the CLI and
/// published as <c>adapterUri</c>, so without this the signature would leak to every subscriber and log reader.
/// </summary>
internal sealed class CredentialFreeUriBlobStore(IBlobStore inner) : IBlobStore
{
    /// <summary>The configured store.</summary>
    public IBlobStore Inner => inner;

    public string UriFor(string name)
    {
        string uri = inner.UriFor(name);
        int query = uri.IndexOf('?', StringComparison.Ordinal);
        if (query < 0)
            return uri;
        string bare = uri[..query];
        return name.EndsWith('/') && !bare.EndsWith('/') ? bare + "/" : bare;
    }

    public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
    public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
    public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
    public Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default) => inner.UploadAsync(name, content, condition, cancellationToken);
    public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
    public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => inner.DeleteAsync(name, cancellationToken);
    public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
}
