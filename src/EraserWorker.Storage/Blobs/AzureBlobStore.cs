using System.Runtime.CompilerServices;
using Azure;
using Azure.Core;
using Azure.Identity;
using Azure.Storage;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace EraserWorker.Storage.Blobs;

/// <summary>
/// <see cref="IBlobStore"/> over one Azure Blob Storage container (or Azurite). Conditions map to
/// <c>If-None-Match: *</c> / <c>If-Match</c>; large uploads are staged as blocks and committed at once, so
/// they appear atomically. The container is created when missing (at start-up through
/// <see cref="InitializeAsync"/>, else on first use) unless container creation is off
/// (<see cref="StorageOptions.CreateContainer"/>); then only blob operations of that container are used — read, create,
/// write, delete, list — which a container-scoped SAS or <c>Storage Blob Data Contributor</c> on the container allow.
/// A refusal for lack of permission (HTTP 403) is thrown as <see cref="StorageAccessDeniedException"/>.
/// </summary>
public sealed class AzureBlobStore : IBlobStore
{
    private readonly IStorageMetrics _metrics;
    private readonly SemaphoreSlim _initGate = new(1, 1);
    private readonly bool _createContainer;
    private volatile bool _initialized;

    /// <summary>Creates a store over <paramref name="container"/>.</summary>
    /// <param name="container">The container.</param>
    /// <param name="metrics">Byte counters.</param>
    /// <param name="createContainer">Create the container when it is missing (else a missing container is an error).</param>
    public AzureBlobStore(BlobContainerClient container, IStorageMetrics? metrics = null, bool createContainer = true)
    {
        Container = container ?? throw new ArgumentNullException(nameof(container));
        _metrics = metrics ?? NullStorageMetrics.Instance;
        _createContainer = createContainer;
    }

    /// <summary>The container client.</summary>
    public BlobContainerClient Container { get; }

    /// <summary>
    /// Creates a store from <see cref="StorageOptions"/>: <see cref="StorageOptions.ConnectionString"/>, or
    /// <see cref="StorageOptions.ServiceUri"/> with <paramref name="credential"/> (default
    /// <see cref="DefaultAzureCredential"/>: managed identity, workload identity, environment, Azure CLI…).
    /// </summary>
    public static AzureBlobStore Create(StorageOptions options, IStorageMetrics? metrics = null, TokenCredential? credential = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var clientOptions = new BlobClientOptions();
        clientOptions.Retry.MaxRetries = 5;
        clientOptions.Retry.Mode = RetryMode.Exponential;
        clientOptions.Retry.NetworkTimeout = TimeSpan.FromSeconds(100);
        BlobServiceClient service = !string.IsNullOrWhiteSpace(options.ConnectionString)
            ? new BlobServiceClient(options.ConnectionString, clientOptions)
            : !string.IsNullOrWhiteSpace(options.ServiceUri)
                ? new BlobServiceClient(new Uri(options.ServiceUri), credential ?? new DefaultAzureCredential(), clientOptions)
                : throw new ArgumentException("AzureBlob storage needs Eraser:Storage:ConnectionString or Eraser:Storage:ServiceUri.", nameof(options));
        return new AzureBlobStore(service.GetBlobContainerClient(options.Container), metrics, options.CreateContainer);
    }

    /// <inheritdoc />
    public async Task InitializeAsync(CancellationToken cancellationToken = default)
    {
        if (_initialized)
            return;
        await _initGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_initialized)
                return;
            if (_createContainer)
            {
                try
                {
                    await Container.CreateIfNotExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
                    _initialized = true;
                    return;
                }
                catch (RequestFailedException e) when (e.Status == 403)
                {
                    // Not allowed to create containers (a container SAS, a role on the container): fine if it exists.
                }
            }
            // Listing is the one container-level read a container SAS (sp=l) and Storage Blob Data Contributor allow.
            try
            {
                await foreach (var _ in Container.GetBlobsAsync(BlobTraits.None, BlobStates.None, "adapters/", cancellationToken)
                                   .AsPages(pageSizeHint: 1).ConfigureAwait(false))
                    break;
            }
            catch (RequestFailedException e) when (e.Status == 404)
            {
                throw new InvalidOperationException(
                    $"The blob container '{Container.Name}' does not exist, and Eraser:Storage:CreateContainer is {(_createContainer ? "true but creating it was refused (403)" : "false")}: create it when provisioning the storage account.", e);
            }
            catch (RequestFailedException e) when (e.Status == 403)
            {
                throw Denied(e, "list", "adapters/");
            }
            _initialized = true;
        }
        finally
        {
            _initGate.Release();
        }
    }

    /// <inheritdoc />
    public async Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default)
    {
        BlobNames.Validate(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var props = (await Container.GetBlobClient(name).GetPropertiesAsync(cancellationToken: cancellationToken).ConfigureAwait(false)).Value;
            return new BlobItem(name, props.ContentLength, props.ETag.ToString(), props.LastModified);
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
        catch (RequestFailedException e) when (e.Status == 403)
        {
            throw Denied(e, "read", name);
        }
    }

    /// <inheritdoc />
    public async Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        BlobNames.Validate(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        BlobDownloadStreamingResult result;
        try
        {
            result = (await Container.GetBlobClient(name).DownloadStreamingAsync(cancellationToken: cancellationToken).ConfigureAwait(false)).Value;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
        catch (RequestFailedException e) when (e.Status == 403)
        {
            throw Denied(e, "read", name);
        }
        using (result)
        {
            long length = 0;
            byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 16);
            try
            {
                int read;
                while ((read = await result.Content.ReadAsync(buffer.AsMemory(), cancellationToken).ConfigureAwait(false)) > 0)
                {
                    await destination.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                    length += read;
                }
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
                _metrics.BytesTransferred(StorageDirections.Download, length);
            }
            return new BlobDownload(name, length, result.Details.ETag.ToString());
        }
    }

    /// <inheritdoc />
    public async Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(content);
        BlobNames.Validate(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        var conditions = condition.Kind switch
        {
            BlobConditionKind.IfNoneMatchAny => new BlobRequestConditions { IfNoneMatch = ETag.All },
            BlobConditionKind.IfMatch => new BlobRequestConditions { IfMatch = new ETag(condition.ETag!) },
            _ => null,
        };
        var counting = new CountingReadStream(content);
        try
        {
            var info = await Container.GetBlobClient(name).UploadAsync(counting, new BlobUploadOptions
            {
                Conditions = conditions,
                TransferOptions = new StorageTransferOptions
                {
                    InitialTransferSize = 8 << 20,
                    MaximumTransferSize = 8 << 20,
                    MaximumConcurrency = 4,
                },
            }, cancellationToken).ConfigureAwait(false);
            return info.Value.ETag.ToString();
        }
        catch (RequestFailedException e) when (conditions is not null
            && (e.Status == 412 || e.Status == 409 && e.ErrorCode == BlobErrorCode.BlobAlreadyExists
                || e.Status == 404 && e.ErrorCode == BlobErrorCode.BlobNotFound))
        {
            throw new BlobConditionFailedException(name, condition, e);
        }
        catch (RequestFailedException e) when (e.Status == 403)
        {
            throw Denied(e, "write", name);
        }
        finally
        {
            _metrics.BytesTransferred(StorageDirections.Upload, counting.BytesRead);
        }
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<string> ListAsync(string prefix, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        BlobNames.ValidatePrefix(prefix);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        var items = Container.GetBlobsAsync(BlobTraits.None, BlobStates.None, prefix.Length == 0 ? null : prefix, cancellationToken).GetAsyncEnumerator(cancellationToken);
        try
        {
            while (true)
            {
                try
                {
                    if (!await items.MoveNextAsync().ConfigureAwait(false))
                        break;
                }
                catch (RequestFailedException e) when (e.Status == 403)
                {
                    throw Denied(e, "list", prefix);
                }
                yield return items.Current.Name;
            }
        }
        finally
        {
            await items.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public async Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default)
    {
        BlobNames.Validate(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return (await Container.GetBlobClient(name).DeleteIfExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false)).Value;
        }
        catch (RequestFailedException e) when (e.Status == 403)
        {
            throw Denied(e, "delete", name);
        }
    }

    /// <inheritdoc />
    public async Task<bool> IsReachableAsync(CancellationToken cancellationToken = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        try
        {
            // A cheap listing of at most one blob: allowed by a container SAS (sp=l) and by Storage Blob Data Contributor on
            // the container, unlike reading the container's properties.
            await InitializeAsync(timeout.Token).ConfigureAwait(false);
            await foreach (var _ in Container.GetBlobsAsync(BlobTraits.None, BlobStates.None, "adapters/", timeout.Token)
                               .AsPages(pageSizeHint: 1).ConfigureAwait(false))
                break;
            return true;
        }
        catch (Exception e) when (e is RequestFailedException or AuthenticationFailedException or UnauthorizedAccessException or InvalidOperationException
                                      or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            _initialized = false;
            return false;
        }
    }

    private StorageAccessDeniedException Denied(RequestFailedException e, string operation, string name) =>
        new(operation, name, Container.Name, e.ErrorCode, e);

    /// <inheritdoc />
    public string UriFor(string name)
    {
        BlobNames.Validate(name, allowTrailingSlash: true);
        string uri = Container.GetBlobClient(name.TrimEnd('/')).Uri.AbsoluteUri;
        return name.EndsWith('/') ? uri + "/" : uri;
    }

    /// <summary>Read-only pass-through that counts the bytes read.</summary>
    private sealed class CountingReadStream(Stream inner) : Stream
    {
        private long _bytesRead;

        public long BytesRead => Interlocked.Read(ref _bytesRead);
        public override bool CanRead => true;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => false;
        public override long Length => inner.Length;

        public override long Position
        {
            get => inner.Position;
            set => inner.Position = value;
        }

        public override int Read(byte[] buffer, int offset, int count) => Count(inner.Read(buffer, offset, count));

        public override int Read(Span<byte> buffer) => Count(inner.Read(buffer));

        public override async Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            Count(await inner.ReadAsync(buffer.AsMemory(offset, count), cancellationToken).ConfigureAwait(false));

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            Count(await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false));

        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);

        public override void Flush()
        {
        }

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        private int Count(int read)
        {
            Interlocked.Add(ref _bytesRead, read);
            return read;
        }
    }
}
