using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;

namespace EraserWorker.Storage.Blobs;

/// <summary>
/// <see cref="IBlobStore"/> over a local folder (the embedded default). Blob <c>a/b/c</c> is the file
/// <c>&lt;root&gt;/a/b/c</c>; the store's own files live in <c>&lt;root&gt;/.eraser/</c> (<c>tmp/</c>, <c>locks/</c>).
/// <list type="bullet">
/// <item>ETag = SHA-256 of the content (quoted hex): consistent with the bytes read, no sidecar needed.
/// Computing it for <see cref="GetPropertiesAsync"/> reads the file.</item>
/// <item>Writes go to <c>.eraser/tmp/</c>, are flushed to disk, and are renamed over the target — readers
/// never see partial files.</item>
/// <item>The condition check and the rename run under a lock that holds across processes on one machine: one
/// of 256 lock files (<c>.eraser/locks/XX.lock</c>, chosen by a hash of the blob name) opened with
/// <see cref="FileShare.None"/> (an advisory <c>flock</c> on Unix), plus an in-process semaphore. Do not set
/// <c>DOTNET_SYSTEM_IO_DISABLEFILELOCKING</c>. Several machines sharing one network folder are not supported.</item>
/// </list>
/// </summary>
public sealed class FileSystemBlobStore : IBlobStore
{
    private const int LockStripes = 256;
    private static readonly ConcurrentDictionary<string, SemaphoreSlim> ProcessLocks = new(StringComparer.Ordinal);

    private readonly IStorageMetrics _metrics;
    private readonly TimeSpan _lockTimeout;
    private readonly string _tmpDir;
    private readonly string _lockDir;
    private volatile bool _initialized;

    /// <summary>Creates a store rooted at <paramref name="root"/> (made absolute against the current directory).</summary>
    public FileSystemBlobStore(string root, IStorageMetrics? metrics = null, TimeSpan? lockTimeout = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(root);
        Root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        _metrics = metrics ?? NullStorageMetrics.Instance;
        _lockTimeout = lockTimeout ?? TimeSpan.FromSeconds(30);
        _tmpDir = Path.Combine(Root, BlobNames.ReservedRoot, "tmp");
        _lockDir = Path.Combine(Root, BlobNames.ReservedRoot, "locks");
    }

    /// <summary>The absolute root folder.</summary>
    public string Root { get; }

    /// <inheritdoc />
    public Task InitializeAsync(CancellationToken cancellationToken = default)
    {
        if (_initialized)
            return Task.CompletedTask;
        Directory.CreateDirectory(Root);
        Directory.CreateDirectory(_tmpDir);
        Directory.CreateDirectory(_lockDir);
        // Temporary files of writers that crashed: old ones can go (a live writer's file is young).
        foreach (var file in Directory.EnumerateFiles(_tmpDir))
        {
            try
            {
                if (File.GetLastWriteTimeUtc(file) < DateTime.UtcNow.AddDays(-1))
                    File.Delete(file);
            }
            catch (IOException)
            {
            }
        }
        _initialized = true;
        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default)
    {
        string path = PathFor(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        FileStream stream;
        try
        {
            stream = OpenRead(path);
        }
        // Not found when we opened it is not found, even if another process creates it a moment later (checking
        // File.Exists again here would turn that race into a FileNotFoundException for the caller).
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException || e is UnauthorizedAccessException && !File.Exists(path))
        {
            return null;
        }
        await using (stream.ConfigureAwait(false))
        {
            var lastModified = new DateTimeOffset(File.GetLastWriteTimeUtc(path), TimeSpan.Zero);
            string etag = await HashAsync(stream, Stream.Null, cancellationToken).ConfigureAwait(false);
            return new BlobItem(name, stream.Length, etag, lastModified);
        }
    }

    /// <inheritdoc />
    public async Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        string path = PathFor(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        FileStream stream;
        try
        {
            stream = OpenRead(path);
        }
        // Not found when we opened it is not found, even if another process creates it a moment later (checking
        // File.Exists again here would turn that race into a FileNotFoundException for the caller).
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException || e is UnauthorizedAccessException && !File.Exists(path))
        {
            return null;
        }
        await using (stream.ConfigureAwait(false))
        {
            long length = stream.Length;
            string etag = await HashAsync(stream, destination, cancellationToken).ConfigureAwait(false);
            _metrics.BytesTransferred(StorageDirections.Download, length);
            return new BlobDownload(name, length, etag);
        }
    }

    /// <inheritdoc />
    public async Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(content);
        string path = PathFor(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        string temp = Path.Combine(_tmpDir, $"{Guid.NewGuid():N}.tmp");
        try
        {
            string etag;
            long length;
            var tempStream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
            await using (tempStream.ConfigureAwait(false))
            {
                etag = await HashAsync(content, tempStream, cancellationToken).ConfigureAwait(false);
                length = tempStream.Length;
                await tempStream.FlushAsync(cancellationToken).ConfigureAwait(false);
                tempStream.Flush(flushToDisk: true);
            }

            using (await AcquireLockAsync(name, cancellationToken).ConfigureAwait(false))
            {
                switch (condition.Kind)
                {
                    case BlobConditionKind.IfNoneMatchAny:
                        if (File.Exists(path))
                            throw new BlobConditionFailedException(name, condition);
                        break;
                    case BlobConditionKind.IfMatch:
                        string? current = await CurrentETagAsync(path, cancellationToken).ConfigureAwait(false);
                        if (current is null || !string.Equals(current, condition.ETag, StringComparison.Ordinal))
                            throw new BlobConditionFailedException(name, condition);
                        break;
                }
                if (Directory.Exists(path))
                    throw new IOException($"Blob '{name}' cannot be stored: a folder of that name exists (a blob name is also the prefix of other blobs).");
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.Move(temp, path, overwrite: true);
            }
            _metrics.BytesTransferred(StorageDirections.Upload, length);
            return etag;
        }
        finally
        {
            TryDelete(temp);
        }
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<string> ListAsync(string prefix, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        BlobNames.ValidatePrefix(prefix);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        int slash = prefix.LastIndexOf('/');
        string dir = slash < 0 ? Root : Path.Combine(Root, prefix[..slash].Replace('/', Path.DirectorySeparatorChar));
        if (!Directory.Exists(dir))
            yield break;
        var names = new List<string>();
        try
        {
            foreach (var file in Directory.EnumerateFiles(dir, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0, IgnoreInaccessible = true }))
            {
                string name = Path.GetRelativePath(Root, file).Replace(Path.DirectorySeparatorChar, '/');
                if (name.StartsWith(BlobNames.ReservedRoot + "/", StringComparison.Ordinal))
                    continue;
                if (name.StartsWith(prefix, StringComparison.Ordinal))
                    names.Add(name);
            }
        }
        catch (DirectoryNotFoundException)
        {
            // The folder went away while listing: what was found so far stands.
        }
        names.Sort(StringComparer.Ordinal);
        foreach (var name in names)
        {
            cancellationToken.ThrowIfCancellationRequested();
            yield return name;
        }
    }

    /// <inheritdoc />
    public async Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default)
    {
        string path = PathFor(name);
        await InitializeAsync(cancellationToken).ConfigureAwait(false);
        using (await AcquireLockAsync(name, cancellationToken).ConfigureAwait(false))
        {
            if (!File.Exists(path))
                return false;
            File.Delete(path);
            return true;
        }
    }

    /// <inheritdoc />
    public async Task<bool> IsReachableAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            _initialized = false;
            await InitializeAsync(cancellationToken).ConfigureAwait(false);
            string probe = Path.Combine(_tmpDir, $"probe-{Guid.NewGuid():N}.tmp");
            await File.WriteAllBytesAsync(probe, [], cancellationToken).ConfigureAwait(false);
            File.Delete(probe);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <inheritdoc />
    public string UriFor(string name)
    {
        bool folder = name.EndsWith('/');
        string path = PathFor(name, allowTrailingSlash: true);
        string uri = new Uri(path).AbsoluteUri;
        return folder && !uri.EndsWith('/') ? uri + "/" : uri;
    }

    private string PathFor(string name, bool allowTrailingSlash = false)
    {
        BlobNames.Validate(name, allowTrailingSlash);
        string relative = name.TrimEnd('/').Replace('/', Path.DirectorySeparatorChar);
        string path = Path.GetFullPath(Path.Combine(Root, relative));
        if (!path.StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"Blob name '{name}' leaves the store's root.", nameof(name));
        return path;
    }

    private static FileStream OpenRead(string path) =>
        new(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);

    private static async Task<string?> CurrentETagAsync(string path, CancellationToken cancellationToken)
    {
        if (!File.Exists(path))
            return null;
        try
        {
            var stream = OpenRead(path);
            await using (stream.ConfigureAwait(false))
                return await HashAsync(stream, Stream.Null, cancellationToken).ConfigureAwait(false);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="destination"/> and returns the ETag of the bytes.</summary>
    private static async Task<string> HashAsync(Stream source, Stream destination, CancellationToken cancellationToken)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 16);
        try
        {
            int read;
            while ((read = await source.ReadAsync(buffer.AsMemory(), cancellationToken).ConfigureAwait(false)) > 0)
            {
                sha.AppendData(buffer, 0, read);
                await destination.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
        return "\"" + Convert.ToHexStringLower(sha.GetHashAndReset()) + "\"";
    }

    private async Task<IDisposable> AcquireLockAsync(string name, CancellationToken cancellationToken)
    {
        int stripe = SHA256.HashData(Encoding.UTF8.GetBytes(name))[0] % LockStripes;
        string lockPath = Path.Combine(_lockDir, $"{stripe:x2}.lock");
        var gate = ProcessLocks.GetOrAdd(lockPath, _ => new SemaphoreSlim(1, 1));
        if (!await gate.WaitAsync(_lockTimeout, cancellationToken).ConfigureAwait(false))
            throw new TimeoutException($"Timed out after {_lockTimeout} waiting for the lock of blob '{name}'.");
        try
        {
            var deadline = DateTime.UtcNow + _lockTimeout;
            int delayMs = 2;
            while (true)
            {
                try
                {
                    var file = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.None);
                    return new Releaser(file, gate);
                }
                catch (IOException) when (DateTime.UtcNow < deadline)
                {
                    // Held by another process: wait a little and try again.
                    await Task.Delay(delayMs, cancellationToken).ConfigureAwait(false);
                    delayMs = Math.Min(delayMs * 2, 50);
                }
                catch (IOException e)
                {
                    throw new TimeoutException($"Timed out after {_lockTimeout} waiting for the lock file '{lockPath}' of blob '{name}'.", e);
                }
            }
        }
        catch
        {
            gate.Release();
            throw;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private sealed class Releaser(FileStream file, SemaphoreSlim gate) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
                return;
            file.Dispose();
            gate.Release();
        }
    }
}
