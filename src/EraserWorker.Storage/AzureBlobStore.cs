using System.Runtime.CompilerServices;
using Azure;
using Azure.Core;
using Azure.Identity;
using Azure.Storage;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace EraserWorker.Storage;

/// <summary>
/// <see cref="IBlobStore"/> over one Azure Blob Storage container (or Azurite). Conditions map to
/// <c>If-None-Match: *</c> / <c>If-Match</c>; large uploads are staged as blocks and committed at once, so
/// they appear atomically. The container is created when missing (at start-up through
/// <see cref="InitializeAsync"/>, else on first use).
/// </summary>
public sealed class AzureBlobStore : IBlobStore
{
    private readonly IStorageMetrics _metrics;
    private readonly SemaphoreSlim _initGate = new(1, 1);
    private volatile bool _initialized;

    /// <summary>Creates a store over <paramref name="container"/>.</summary>
    public AzureBlobStore(BlobContainerClient container, IStorageMetrics? metrics = null)
    {
        Container = container ?? throw new ArgumentNullException(nameof(container));
        _metrics = metrics ?? NullStorageMetrics.Instance;
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
        return new AzureBlobStore(service.GetBlobContainerClient(options.Container), metrics);
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
            await Container.CreateIfNotExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
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
        await foreach (var item in Container.GetBlobsAsync(BlobTraits.None, BlobStates.None, prefix.Length == 0 ? null : prefix, cancellationToken).ConfigureAwait(false))
            yield return item.Name;
    }

    /// <inheritdoc />
    public async Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default)
    {
        BlobNames.Validate(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        return (await Container.GetBlobClient(name).DeleteIfExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false)).Value;
    }

    /// <inheritdoc />
    public async Task<bool> IsReachableAsync(CancellationToken cancellationToken = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        try
        {
            await InitializeAsync(timeout.Token).ConfigureAwait(false);
            await Container.GetPropertiesAsync(cancellationToken: timeout.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is RequestFailedException or AuthenticationFailedException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            _initialized = false;
            return false;
        }
    }

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
