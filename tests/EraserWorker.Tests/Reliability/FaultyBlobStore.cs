using EraserWorker.Storage;

namespace EraserWorker.Tests.Reliability;

/// <summary>Where an injected upload failure happens: before the blob is written (the request never reached the
/// service) or after (the service wrote it, the answer was lost: a connection reset after the commit).</summary>
public enum FaultTiming
{
    BeforeWrite,
    AfterWrite,
}

/// <summary>
/// An <see cref="IBlobStore"/> that fails one chosen upload — the <c>n</c>-th upload whose blob name ends with
/// <see cref="NameSuffix"/> — with an <see cref="IOException"/>, before or after passing it to the real store. Every
/// other operation goes through unchanged, except deletes when <paramref name="failDeletes"/> is set (with it, a writer
/// cannot clean up after the fault either: what a process killed mid-write leaves behind).
/// </summary>
public sealed class FaultyBlobStore(IBlobStore inner, string nameSuffix, int occurrence = 1, FaultTiming timing = FaultTiming.BeforeWrite,
    bool failDeletes = false) : IBlobStore
{
    private int _seen;
    private int _failed;

    public string NameSuffix { get; } = nameSuffix;

    /// <summary>True once the fault has been injected.</summary>
    public bool Injected => Volatile.Read(ref _failed) > 0;

    /// <summary>Names of every upload attempted, in order.</summary>
    public List<string> Uploads { get; } = [];

    public async Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default)
    {
        lock (Uploads)
            Uploads.Add($"{name} ({condition})");
        bool fail = name.EndsWith(NameSuffix, StringComparison.Ordinal) && Interlocked.Increment(ref _seen) == occurrence;
        if (fail && timing == FaultTiming.BeforeWrite)
        {
            Interlocked.Exchange(ref _failed, 1);
            throw new IOException($"injected fault before uploading {name}");
        }
        string etag = await inner.UploadAsync(name, content, condition, cancellationToken);
        if (fail)
        {
            Interlocked.Exchange(ref _failed, 1);
            throw new IOException($"injected fault after uploading {name} (the write happened, its answer was lost)");
        }
        return etag;
    }

    public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
    public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
    public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
    public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
    public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) =>
        failDeletes ? throw new IOException($"injected fault: cannot delete {name}") : inner.DeleteAsync(name, cancellationToken);
    public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
    public string UriFor(string name) => inner.UriFor(name);
}

/// <summary>
/// A reader that keeps looking at an adapter while it is written, the way a serving system would: it reads the head,
/// then the head's version (its manifest, and the files checked against the manifest's SHA-256s), and every version the
/// store lists as complete. Any incomplete or inconsistent version it ever sees is recorded.
/// </summary>
public sealed class ConcurrentReader : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly List<string> _violations = [];
    private int _reads;

    public ConcurrentReader(AdapterStore store, string adapterId, string workDirectory)
    {
        _loop = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                try
                {
                    var head = await store.GetHeadAsync(adapterId);
                    if (head is not null)
                    {
                        if (await store.ReadManifestAsync(adapterId, head.Version) is null)
                            Violation($"the head points to version {head.Version}, which has no manifest (incomplete)");
                        else
                            await CheckAsync(store, adapterId, head.Version, workDirectory);
                    }
                    foreach (int v in await store.ListVersionsAsync(adapterId))
                        await CheckAsync(store, adapterId, v, workDirectory);
                    Interlocked.Increment(ref _reads);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    Violation($"reading failed: {e.GetType().Name}: {e.Message}");
                }
                await Task.Delay(5);
            }
        });
    }

    /// <summary>Complete reading passes made.</summary>
    public int Reads => Volatile.Read(ref _reads);

    /// <summary>Waits until <see cref="Reads"/> reaches <paramref name="passes"/>; false after <paramref name="timeout"/>.</summary>
    public async Task<bool> WaitForPassesAsync(int passes, TimeSpan timeout)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (Reads < passes)
        {
            if (watch.Elapsed > timeout)
                return false;
            await Task.Delay(10);
        }
        return true;
    }

    public IReadOnlyList<string> Violations
    {
        get
        {
            lock (_violations)
                return [.. _violations];
        }
    }

    private async Task CheckAsync(AdapterStore store, string adapterId, int version, string workDirectory)
    {
        string dir = Path.Combine(workDirectory, $"reader-{Guid.NewGuid():N}");
        try
        {
            // Verifies each file against the manifest's SHA-256 and that the model exists.
            await store.DownloadVersionAsync(adapterId, version, dir);
            foreach (var file in new[] { StoredFileNames.AdapterWeights, StoredFileNames.AdapterConfig, StoredFileNames.Manifest })
                if (!File.Exists(Path.Combine(dir, file)))
                    Violation($"version {version} is listed complete but has no {file}");
        }
        catch (InvalidDataException e)
        {
            Violation($"version {version} is listed complete but inconsistent: {e.Message}");
        }
        catch (VersionNotFoundException)
        {
            // listed a moment ago, so it was complete then: versions are never deleted
            Violation($"version {version} was complete and then was not");
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }

    private void Violation(string what)
    {
        lock (_violations)
            _violations.Add(what);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        _stop.Dispose();
    }
}
