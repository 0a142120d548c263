using System.Text.Json.Nodes;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;

namespace EraserWorker.Tests.Storage;

/// <summary>
/// "Publish a version" as one call (<see cref="AdapterStore.PublishVersionAsync"/>) and the redelivery index it keeps:
/// which version applied a request is found in O(1) reads per request, whatever the history's length, also across the
/// crash window between moving the head and recording the requests, and for stores written before request markers.
/// Run against the folder store and Azurite.
/// </summary>
public abstract class VersionPublisherTests : IAsyncLifetime, IDisposable
{
    private const string AdapterId = "tenant-a/publisher-bot";
    protected readonly TempDirectory Temp = new("eraser-publisher");
    private RidgeOracle _ridge = new(seed: 91);
    private string _adapterDir = "";

    protected abstract IBlobStore CreateBlobStore();

    private AdapterStore NewStore(IBlobStore? blobs = null, string writerId = "writer-a") =>
        new(blobs ?? CreateBlobStore(), new StorageOptions { WriterId = writerId });

    public virtual async Task InitializeAsync()
    {
        var (adapter, cache) = _ridge.WriteFiles(Temp.Sub("source"));
        _adapterDir = adapter;
        await NewStore().RegisterAsync(AdapterId, adapter, cache);
    }

    public virtual Task DisposeAsync() => Task.CompletedTask;

    public void Dispose() => Temp.Dispose();

    /// <summary>A draft on the current head applying <paramref name="requestIds"/> (the adapter's own files as the version's).</summary>
    private Task<VersionDraft> DraftAsync(AdapterStore store, params string[] requestIds) => DraftAsync(store, null, requestIds);

    /// <param name="removed">The draft's cumulative removals; default: the head's plus one more sample.</param>
    private async Task<VersionDraft> DraftAsync(AdapterStore store, IReadOnlyList<string>? removed, params string[] requestIds)
    {
        var head = (await store.GetHeadAsync(AdapterId))!;
        var manifest = (await store.ReadManifestAsync(AdapterId, head.Version))!;
        string dir = Temp.Sub("draft-" + Guid.NewGuid().ToString("N")[..8]);
        foreach (var file in Directory.GetFiles(_adapterDir))
            File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        removed ??= manifest.Edits.Removed.Concat([_ridge.Ids[head.Version % _ridge.Ids.Length]]).Distinct().ToList();
        return new VersionDraft(head, manifest, dir,
            requestIds.Select(id => new AppliedRequest(id, UnlearningTasks.Remove, [_ridge.Ids[0]], null, null)).ToList(),
            new ManifestEdits { Removed = removed }, new SolverSummary("direct", 1, 0.01, 1e-12, 0), 1.5);
    }

    private async Task<int> PublishAsync(AdapterStore store, params string[] requestIds) => await PublishAsync(store, null, requestIds);

    private async Task<int> PublishAsync(AdapterStore store, IReadOnlyList<string>? removed, params string[] requestIds)
    {
        var result = await store.PublishVersionAsync(await DraftAsync(store, removed, requestIds), TimeSpan.FromSeconds(5));
        return Assert.IsType<PublishResult.Published>(result).Version.Version;
    }

    [ServiceFact]
    public async Task A_published_version_is_the_head_its_manifest_records_the_draft_and_its_requests_are_found_applied()
    {
        var store = NewStore();
        var draft = await DraftAsync(store, "r-1", "r-2");
        var published = Assert.IsType<PublishResult.Published>(await store.PublishVersionAsync(draft, TimeSpan.FromSeconds(5)));

        Assert.Equal(1, published.Version.Version);
        Assert.Equal(1, (await store.GetHeadAsync(AdapterId))!.Version);
        var manifest = (await store.ReadManifestAsync(AdapterId, 1))!;
        Assert.Equal((0, AdapterManifest.UpdateKind, "writer-a"), (manifest.ParentVersion, manifest.Kind, manifest.WriterId));
        Assert.Equal(["r-1", "r-2"], manifest.Requests.Select(r => r.RequestId));
        Assert.Equal(draft.Edits.Removed, manifest.Edits.Removed);
        Assert.Null(manifest.RequestHistory);
        // The digests were computed once, from the files, and match what a download verifies.
        Assert.Equal(WorkerTestBed.Sha256OfFile(Path.Combine(draft.LocalDirectory, StoredFileNames.AdapterWeights)), manifest.WeightsSha256);
        await store.DownloadVersionAsync(AdapterId, 1, Temp.Sub("download"));
        var applied = await store.FindAppliedAsync(manifest, ["r-1", "r-2", "r-unknown"]);
        Assert.Equal(new Dictionary<string, int> { ["r-1"] = 1, ["r-2"] = 1 }, applied);
    }

    [ServiceFact]
    public async Task A_draft_on_a_head_that_moved_is_head_moved_and_leaves_nothing_visible()
    {
        var a = NewStore(writerId: "writer-a");
        var b = NewStore(writerId: "writer-b");
        var draftA = await DraftAsync(a, "a-1");
        var draftB = await DraftAsync(b, "b-1");
        Assert.IsType<PublishResult.Published>(await a.PublishVersionAsync(draftA, TimeSpan.FromSeconds(5)));

        var moved = Assert.IsType<PublishResult.HeadMoved>(await b.PublishVersionAsync(draftB, TimeSpan.FromSeconds(5)));

        Assert.Contains("version 1", moved.Reason);
        Assert.Equal([0, 1], await a.ListVersionsAsync(AdapterId));
        var head = (await a.ReadManifestAsync(AdapterId, 1))!;
        Assert.Equal(["a-1"], head.Requests.Select(r => r.RequestId));
        Assert.Empty(await a.FindAppliedAsync(head, ["b-1"]));
    }

    [ServiceFact]
    public async Task Requests_of_a_version_whose_markers_were_lost_are_answered_by_the_head_and_recorded_by_the_next_version()
    {
        // The writer of version 2 "dies" between moving the head and writing its markers (the marker uploads fail).
        await PublishAsync(NewStore(), "r-1");
        var dying = new FailingMarkersBlobStore(CreateBlobStore(), BlobLayout.RequestMarker(AdapterId, "r-2"));
        var dyingStore = NewStore(dying);
        Assert.IsType<PublishResult.Published>(await dyingStore.PublishVersionAsync(await DraftAsync(dyingStore, "r-2"), TimeSpan.FromSeconds(5)));
        Assert.True(dying.Injected, "the marker uploads were not interrupted");
        var store = NewStore();
        // r-1's marker was written (by the writer of version 1 and again before version 2); r-2 has none yet.
        Assert.Equal(2, await store.CountAppliedRequestsAsync((await store.ReadManifestAsync(AdapterId, 2))!));

        // A redelivery now: the head's manifest answers for r-2.
        var head2 = (await store.ReadManifestAsync(AdapterId, 2))!;
        Assert.Equal(new Dictionary<string, int> { ["r-1"] = 1, ["r-2"] = 2 }, await store.FindAppliedAsync(head2, ["r-1", "r-2"]));

        // The next version records them before the head moves past version 2.
        await PublishAsync(store, "r-3");
        var head3 = (await store.ReadManifestAsync(AdapterId, 3))!;
        Assert.Equal(new Dictionary<string, int> { ["r-1"] = 1, ["r-2"] = 2, ["r-3"] = 3 }, await store.FindAppliedAsync(head3, ["r-1", "r-2", "r-3"]));
        Assert.Equal(3, await store.CountAppliedRequestsAsync(head3));
    }

    [ServiceFact]
    public async Task A_head_of_the_older_format_with_a_request_history_is_migrated_to_markers_by_the_next_version()
    {
        // Version 1 as the worker wrote it before markers: the cumulative history in the manifest.
        var store = NewStore();
        string v1 = Temp.Sub("legacy-v1");
        foreach (var file in Directory.GetFiles(_adapterDir))
            File.Copy(file, Path.Combine(v1, Path.GetFileName(file)));
        var legacy = new JsonObject
        {
            ["format"] = AdapterManifest.FormatName,
            ["adapterId"] = AdapterId,
            ["version"] = 1,
            ["parentVersion"] = 0,
            ["requests"] = new JsonArray(new JsonObject { ["requestId"] = "old-2", ["task"] = "remove", ["sampleIds"] = new JsonArray("s001") }),
            ["requestHistory"] = new JsonObject { ["old-1"] = 1, ["old-2"] = 1 },
            ["edits"] = new JsonObject { ["removed"] = new JsonArray("s001"), ["replaced"] = new JsonObject() },
            ["files"] = new JsonObject
            {
                [StoredFileNames.AdapterWeights] = new JsonObject { ["sha256"] = WorkerTestBed.Sha256OfFile(Path.Combine(v1, StoredFileNames.AdapterWeights)), ["length"] = 1 },
            },
        };
        File.WriteAllText(Path.Combine(v1, StoredFileNames.Manifest), legacy.ToJsonString());
        await store.WriteVersionAsync(AdapterId, 1, v1);
        Assert.True(await store.TryAdvanceHeadAsync(AdapterId, 1, (await store.GetHeadAsync(AdapterId))!.ETag));
        var head1 = (await store.ReadManifestAsync(AdapterId, 1))!;
        Assert.Equal(new Dictionary<string, int> { ["old-1"] = 1, ["old-2"] = 1 }, await store.FindAppliedAsync(head1, ["old-1", "old-2", "new-1"]));
        Assert.Equal(1, head1.Files[StoredFileNames.AdapterWeights].Bytes); // the older files entry ("length") reads as bytes

        await PublishAsync(store, "new-1");

        var head2 = (await store.ReadManifestAsync(AdapterId, 2))!;
        Assert.Null(head2.RequestHistory);
        Assert.Equal(new Dictionary<string, int> { ["old-1"] = 1, ["old-2"] = 1, ["new-1"] = 2 },
            await store.FindAppliedAsync(head2, ["old-1", "old-2", "new-1"]));
    }

    [ServiceFact]
    public async Task A_manifest_does_not_grow_with_the_number_of_requests_ever_applied()
    {
        var store = NewStore();
        var sizes = new List<long>();
        for (int i = 1; i <= 25; i++)
        {
            // The same edit set every time (it is bounded by the training set; here the history is what grows).
            int version = await PublishAsync(store, [_ridge.Ids[0], _ridge.Ids[1]], $"request-{i:D4}");
            sizes.Add((await store.ReadManifestAsync(AdapterId, version))!.ToUtf8Json().Length);
        }
        // Versions 1 and 25 differ only in their numbers' digits.
        Assert.True(sizes.Max() - sizes.Min() <= 4, $"manifest sizes: {string.Join(", ", sizes)}");
        var head = (await store.ReadManifestAsync(AdapterId, 25))!;
        var applied = await store.FindAppliedAsync(head, Enumerable.Range(1, 25).Select(i => $"request-{i:D4}").ToList());
        Assert.Equal(Enumerable.Range(1, 25), applied.Values.Order());
    }
}

/// <summary>Fails the upload of one request's marker: the writer of that request's version dies right after moving the head.</summary>
internal sealed class FailingMarkersBlobStore(IBlobStore inner, string marker) : IBlobStore
{
    private int _failed;

    public bool Injected => Volatile.Read(ref _failed) > 0;

    public Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default)
    {
        if (name == marker)
        {
            Interlocked.Increment(ref _failed);
            throw new IOException($"injected fault before uploading {name}");
        }
        return inner.UploadAsync(name, content, condition, cancellationToken);
    }

    public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
    public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
    public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
    public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
    public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => inner.DeleteAsync(name, cancellationToken);
    public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
    public string UriFor(string name) => inner.UriFor(name);
}

public sealed class FileSystemVersionPublisherTests : VersionPublisherTests
{
    protected override IBlobStore CreateBlobStore() => new FileSystemBlobStore(Path.Combine(Temp.Path, "store"));
}

public sealed class AzureVersionPublisherTests : VersionPublisherTests
{
    private AzuriteContainer? _container;

    private AzuriteContainer Container => _container ??= AzuriteContainer.Create();

    protected override IBlobStore CreateBlobStore() => new AzureBlobStore(Container.Service.GetBlobContainerClient(Container.Name));

    public override async Task DisposeAsync()
    {
        if (_container is not null)
            await _container.DisposeAsync();
    }
}
