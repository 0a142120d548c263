using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;

namespace EraserWorker.Tests.Storage;

/// <summary>The SPEC §4 layout and its concurrency rules, run against every blob store.</summary>
public abstract class AdapterStoreContractTests : IAsyncLifetime, IDisposable
{
    protected readonly TempDirectory Temp = new("eraser-adapter-store");
    private readonly ManualClock _clock = new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    /// <summary>A new blob store over the SAME storage as every other one of this test.</summary>
    protected abstract IBlobStore CreateBlobStore();

    protected AdapterStore NewStore(string? writerId = null) =>
        new(CreateBlobStore(), new StorageOptions { WriterId = writerId, VersionClaimTimeout = TimeSpan.FromMinutes(10) }, timeProvider: _clock);

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual Task DisposeAsync() => Task.CompletedTask;

    public void Dispose() => Temp.Dispose();

    // ---------------------------------------------------------------------------------------- fixtures

    private static byte[] RandomBytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static string Sha(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    private string MakeAdapter(string name, int seed)
    {
        string dir = Temp.Sub(name);
        File.WriteAllText(Path.Combine(dir, StoredFileNames.AdapterConfig), """{"peft_type":"LORA","r":4}""");
        File.WriteAllBytes(Path.Combine(dir, StoredFileNames.AdapterWeights), RandomBytes(200_000 + seed, seed));
        return dir;
    }

    private string MakeCache(string name, int seed)
    {
        string dir = Temp.Sub(name);
        File.WriteAllText(Path.Combine(dir, StoredFileNames.CacheIndex), """{"format":"eraser.gradcache/v1","parameters":[],"l2":0.0,"shards":[]}""");
        File.WriteAllBytes(Path.Combine(dir, "shard-00000.safetensors"), RandomBytes(50_000, seed + 1));
        File.WriteAllText(Path.Combine(dir, "shard-00000.ids"), "s1\ns2\ns3\n");
        return dir;
    }

    /// <summary>A version folder: model + config + a manifest listing the model's hash.</summary>
    private string MakeVersion(string name, int seed, int parent = 0)
    {
        string dir = Temp.Sub(name);
        var model = RandomBytes(120_000, seed);
        File.WriteAllBytes(Path.Combine(dir, StoredFileNames.AdapterWeights), model);
        File.WriteAllText(Path.Combine(dir, StoredFileNames.AdapterConfig), """{"peft_type":"LORA","r":4}""");
        var manifest = new JsonObject
        {
            ["parentVersion"] = parent,
            ["requestIds"] = new JsonArray("r-" + seed),
            ["files"] = new JsonObject { [StoredFileNames.AdapterWeights] = new JsonObject { ["sha256"] = Sha(model) } },
        };
        File.WriteAllText(Path.Combine(dir, StoredFileNames.Manifest), manifest.ToJsonString());
        return dir;
    }

    private static void AssertSameFolder(string expected, string actual)
    {
        var e = Directory.GetFiles(expected, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(expected, f)).Order(StringComparer.Ordinal).ToList();
        var a = Directory.GetFiles(actual, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(actual, f)).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(e, a);
        foreach (var f in e)
            Assert.Equal(File.ReadAllBytes(Path.Combine(expected, f)), File.ReadAllBytes(Path.Combine(actual, f)));
    }

    private static async Task<List<string>> ListAsync(IBlobStore blobs, string prefix)
    {
        var names = new List<string>();
        await foreach (var n in blobs.ListAsync(prefix))
            names.Add(n);
        return names;
    }

    // ---------------------------------------------------------------------------------------- tests

    [ServiceFact]
    public async Task A_cache_blob_changed_after_registration_is_refused_when_downloaded_and_nothing_of_it_is_kept()
    {
        var store = NewStore();
        const string id = "tenant-a/tampered";
        await store.RegisterAsync(id, MakeAdapter("adapter-t", 5), MakeCache("cache-t", 6));
        var raw = CreateBlobStore();
        await raw.UploadAsync(BlobLayout.Cache(id) + "shard-00000.safetensors", new MemoryStream(RandomBytes(50_000, 99)), BlobCondition.None);

        string target = Temp.Sub("download-t");
        var refused = await Assert.ThrowsAsync<InvalidDataException>(() => store.DownloadCacheAsync(id, target));

        Assert.Contains("shard-00000.safetensors", refused.Message);
        Assert.Contains("base manifest", refused.Message);
        Assert.False(File.Exists(Path.Combine(target, "shard-00000.safetensors")), "the refused file must not be left behind");
        Assert.Equal(await store.ReadCacheFileAsync(id, "shard-00000.ids"), "s1\ns2\ns3\n"u8.ToArray());
    }

    [ServiceFact]
    public async Task Register_write_and_read_round_trip_byte_identical()
    {
        var store = NewStore();
        const string id = "tenant-a/support-bot";
        string adapter = MakeAdapter("adapter", 1), cache = MakeCache("cache", 2);
        Assert.Null(await store.GetHeadAsync(id));

        var v0 = await store.RegisterAsync(id, adapter, cache);
        Assert.Equal(0, v0.Version);
        Assert.Equal(Sha(File.ReadAllBytes(Path.Combine(adapter, StoredFileNames.AdapterWeights))), v0.Sha256);
        var head = await store.GetHeadAsync(id);
        Assert.NotNull(head);
        Assert.Equal(0, head.Version);
        await Assert.ThrowsAsync<AdapterAlreadyRegisteredException>(() => store.RegisterAsync(id, adapter, cache));

        var baseManifest = await store.ReadManifestAsync(id, 0);
        Assert.NotNull(baseManifest);
        Assert.Equal(v0.Sha256, baseManifest.Files[StoredFileNames.AdapterWeights].Sha256);
        Assert.True(baseManifest.IsBase);

        string v1Dir = MakeVersion("v1", 10);
        var v1 = await store.WriteVersionAsync(id, 1, v1Dir);
        Assert.Equal(Sha(File.ReadAllBytes(Path.Combine(v1Dir, StoredFileNames.AdapterWeights))), v1.Sha256);
        Assert.EndsWith("adapters/tenant-a/support-bot/versions/000001/", v1.Uri);
        Assert.True(await store.TryAdvanceHeadAsync(id, 1, head.ETag));
        Assert.Equal(1, (await store.GetHeadAsync(id))!.Version);
        await Assert.ThrowsAsync<VersionExistsException>(() => store.WriteVersionAsync(id, 1, MakeVersion("v1b", 11)));

        // Every file comes back byte-identical, from another store instance.
        var other = NewStore();
        string down = Temp.Sub("down-v1");
        var read = await other.DownloadVersionAsync(id, 1, down);
        Assert.Equal(v1, read);
        AssertSameFolder(v1Dir, down);
        string down0 = Temp.Sub("down-v0");
        await other.DownloadVersionAsync(id, 0, down0);
        Assert.Equal(File.ReadAllBytes(Path.Combine(adapter, StoredFileNames.AdapterWeights)), File.ReadAllBytes(Path.Combine(down0, StoredFileNames.AdapterWeights)));
        string downCache = Temp.Sub("down-cache");
        await other.DownloadCacheAsync(id, downCache);
        AssertSameFolder(cache, downCache);

        Assert.Equal([0, 1], await other.ListVersionsAsync(id));
        Assert.Equal(v1, await other.GetVersionAsync(id, 1));
        Assert.Null(await other.GetVersionAsync(id, 2));
        Assert.Equal("r-10", (string?)(await other.ReadManifestJsonAsync(id, 1))!["requestIds"]![0]);
        var adapters = new List<string>();
        await foreach (var a in other.ListAdaptersAsync())
            adapters.Add(a);
        Assert.Equal([id], adapters);
        // The claims are gone after completion.
        Assert.Empty(await ListAsync(store.Blobs, BlobLayout.Adapter(id) + "claims/"));
    }

    [ServiceFact]
    public async Task Two_concurrent_head_advances_exactly_one_wins()
    {
        const string id = "race";
        var setup = NewStore();
        await setup.RegisterAsync(id, MakeAdapter("a", 1), MakeCache("c", 2));
        int version = 0;
        for (int round = 0; round < 5; round++)
        {
            var head = (await setup.GetHeadAsync(id))!;
            Assert.Equal(version, head.Version);
            await setup.WriteVersionAsync(id, version + 1, MakeVersion($"r{round}a", 100 + round));
            await setup.WriteVersionAsync(id, version + 2, MakeVersion($"r{round}b", 200 + round));
            var a = NewStore("writer-a");
            var b = NewStore("writer-b");
            using var start = new Barrier(2);
            var results = await Task.WhenAll(
                Task.Run(() => { start.SignalAndWait(); return a.TryAdvanceHeadAsync(id, version + 1, head.ETag); }),
                Task.Run(() => { start.SignalAndWait(); return b.TryAdvanceHeadAsync(id, version + 2, head.ETag); }));
            Assert.Equal(1, results.Count(r => r));
            int winner = results[0] ? version + 1 : version + 2;
            Assert.Equal(winner, (await setup.GetHeadAsync(id))!.Version);
            version += 2;
            if (winner != version)
            {
                // Put the head where the next round expects it (the loser would reload and recompute).
                var h = (await setup.GetHeadAsync(id))!;
                Assert.True(await setup.TryAdvanceHeadAsync(id, version, h.ETag));
            }
        }
    }

    [ServiceFact]
    public async Task Head_cannot_move_to_an_incomplete_version()
    {
        var store = NewStore();
        await store.RegisterAsync("inc", MakeAdapter("a", 1), MakeCache("c", 2));
        var head = (await store.GetHeadAsync("inc"))!;
        await store.Blobs.UploadAsync(BlobLayout.Version("inc", 1) + StoredFileNames.AdapterWeights, new MemoryStream([1, 2, 3]), BlobCondition.CreateOnly);
        await Assert.ThrowsAsync<VersionNotFoundException>(() => store.TryAdvanceHeadAsync("inc", 1, head.ETag));
        Assert.Equal([0], await store.ListVersionsAsync("inc"));
        Assert.Equal(2, await store.NextFreeVersionAsync("inc"));
    }

    [ServiceFact]
    public async Task A_partial_version_left_by_a_crashed_writer_is_completed_by_a_retry()
    {
        const string id = "crash";
        var store = NewStore();
        await store.RegisterAsync(id, MakeAdapter("a", 1), MakeCache("c", 2));
        string prefix = BlobLayout.Version(id, 1);

        // A writer crashed after uploading a different model and no manifest (and no claim).
        await store.Blobs.UploadAsync(prefix + StoredFileNames.AdapterWeights, new MemoryStream(RandomBytes(999, 7)), BlobCondition.CreateOnly);
        string dir = MakeVersion("v1", 20);
        var v1 = await store.WriteVersionAsync(id, 1, dir);
        string down = Temp.Sub("down");
        await store.DownloadVersionAsync(id, 1, down);
        AssertSameFolder(dir, down);
        Assert.Equal(v1, await store.GetVersionAsync(id, 1));
    }

    [ServiceFact]
    public async Task A_live_claim_of_another_writer_blocks_until_it_expires()
    {
        const string id = "claimed";
        var setup = NewStore();
        await setup.RegisterAsync(id, MakeAdapter("a", 1), MakeCache("c", 2));
        string prefix = BlobLayout.Version(id, 1);

        // Writer A claimed version 1 and wrote part of it, then crashed.
        var crashed = NewStore("writer-a");
        string dirA = MakeVersion("va", 30);
        File.Delete(Path.Combine(dirA, StoredFileNames.Manifest));
        File.WriteAllText(Path.Combine(dirA, StoredFileNames.Manifest), "{}");
        var blocker = new BlockingBlobStore(CreateBlobStore(), block: name => name.EndsWith(StoredFileNames.AdapterConfig));
        var crashing = new AdapterStore(blocker, new StorageOptions { WriterId = "writer-a" }, timeProvider: _clock);
        await Assert.ThrowsAsync<IOException>(() => crashing.WriteVersionAsync(id, 1, dirA));
        // Simulate the crash: the claim stays (a crashed process cannot release it).
        Assert.NotNull(await setup.Blobs.GetPropertiesAsync(BlobLayout.Adapter(id) + "claims/000001.json"));

        // Writer B with other files must wait...
        string dirB = MakeVersion("vb", 31);
        var b = NewStore("writer-b");
        await Assert.ThrowsAsync<VersionConflictException>(() => b.WriteVersionAsync(id, 1, dirB));
        // ...but writer A, restarted with the same writer id, completes at once (with other files).
        string dirA2 = MakeVersion("va2", 32);
        await crashed.WriteVersionAsync(id, 1, dirA2);
        string down = Temp.Sub("down-a");
        await setup.DownloadVersionAsync(id, 1, down);
        AssertSameFolder(dirA2, down);

        // Version 2: claim left by A again; B takes over after the claim expired.
        await Assert.ThrowsAsync<IOException>(() => crashing.WriteVersionAsync(id, 2, dirA));
        await Assert.ThrowsAsync<VersionConflictException>(() => b.WriteVersionAsync(id, 2, dirB));
        _clock.Advance(TimeSpan.FromMinutes(11));
        var v2 = await b.WriteVersionAsync(id, 2, dirB);
        string down2 = Temp.Sub("down-b");
        await setup.DownloadVersionAsync(id, 2, down2);
        AssertSameFolder(dirB, down2);
        Assert.Equal(2, v2.Version);
    }

    [ServiceFact]
    public async Task A_manifest_that_disagrees_with_its_files_is_refused()
    {
        var store = NewStore();
        await store.RegisterAsync("bad-manifest", MakeAdapter("a", 1), MakeCache("c", 2));
        string dir = MakeVersion("v", 40);
        File.WriteAllBytes(Path.Combine(dir, StoredFileNames.AdapterWeights), [1, 2, 3]);
        await Assert.ThrowsAsync<ArgumentException>(() => store.WriteVersionAsync("bad-manifest", 1, dir));
        Assert.Empty(await ListAsync(store.Blobs, BlobLayout.Version("bad-manifest", 1)));
    }

    [ServiceFact]
    public async Task Replacement_sets_round_trip_and_are_bound_to_their_adapter()
    {
        var store = NewStore();
        await store.RegisterAsync("tenant/bot", MakeAdapter("a", 1), MakeCache("c", 2));
        await store.RegisterAsync("tenant/other", MakeAdapter("a2", 3), MakeCache("c2", 4));
        string set = MakeCache("repl", 5);
        string name = AdapterStore.NewReplacementName();
        string uri = await store.UploadReplacementsAsync("tenant/bot", name, set);
        Assert.Equal($"eraser:adapters/tenant/bot/replacements/{name}", uri);
        Assert.True(RequestValidation.TryParseReplacementsUri(uri, out var parsedId, out var parsedName));
        Assert.Equal(("tenant/bot", name), (parsedId, parsedName));

        string down = Temp.Sub("down-repl");
        await NewStore().DownloadReplacementsAsync("tenant/bot", uri, down);
        AssertSameFolder(set, down);

        await Assert.ThrowsAsync<ReplacementsExistException>(() => store.UploadReplacementsAsync("tenant/bot", name, set));
        await Assert.ThrowsAsync<ArgumentException>(() => store.DownloadReplacementsAsync("tenant/other", uri, Temp.Sub("x")));
        await Assert.ThrowsAsync<ArgumentException>(() => store.DownloadReplacementsAsync("tenant/bot", "eraser:adapters/tenant/bot/replacements/../x", Temp.Sub("y")));
        await Assert.ThrowsAsync<ArgumentException>(() => store.DownloadReplacementsAsync("tenant/bot", "https://evil.example/x", Temp.Sub("z")));
        await Assert.ThrowsAsync<ReplacementsNotFoundException>(() => store.DownloadReplacementsAsync("tenant/bot", "eraser:adapters/tenant/bot/replacements/none", Temp.Sub("w")));
        await Assert.ThrowsAsync<AdapterNotFoundException>(() => store.UploadReplacementsAsync("tenant/unknown", "r1", set));
        await Assert.ThrowsAsync<AdapterNotFoundException>(() => store.DownloadCacheAsync("tenant/unknown", Temp.Sub("v")));
    }

    [ServiceTheory]
    [InlineData("")]
    [InlineData("UPPER")]
    [InlineData("/lead")]
    [InlineData("trail/")]
    [InlineData("a//b")]
    [InlineData("a/../b")]
    [InlineData("..")]
    [InlineData("a/./b")]
    [InlineData("a b")]
    [InlineData("a\\b")]
    [InlineData("a/cache")]
    [InlineData("a/versions")]
    [InlineData("a/head.json")]
    public async Task Invalid_adapter_ids_are_rejected_before_any_blob_name_is_built(string id)
    {
        var store = NewStore();
        string adapter = MakeAdapter("a", 1), cache = MakeCache("c", 2);
        await Assert.ThrowsAnyAsync<ArgumentException>(() => store.RegisterAsync(id, adapter, cache));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => store.GetHeadAsync(id));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => store.WriteVersionAsync(id, 1, MakeVersion("v", 3)));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => store.DownloadCacheAsync(id, Temp.Sub("d")));
        Assert.Empty(await ListAsync(store.Blobs, ""));
    }

    [ServiceTheory]
    [InlineData("")]
    [InlineData("..")]
    [InlineData(".hidden")]
    [InlineData("a/b")]
    [InlineData("Upper")]
    [InlineData("with space")]
    public async Task Invalid_replacement_names_are_rejected(string name)
    {
        var store = NewStore();
        await store.RegisterAsync("names", MakeAdapter("a", 1), MakeCache("c", 2));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => store.UploadReplacementsAsync("names", name, MakeCache("r", 3)));
    }

    [ServiceFact]
    public async Task Invalid_versions_and_local_file_names_are_rejected()
    {
        var store = NewStore();
        await store.RegisterAsync("files", MakeAdapter("a", 1), MakeCache("c", 2));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.WriteVersionAsync("files", 0, MakeVersion("v0", 3)));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => store.WriteVersionAsync("files", 1_000_000, MakeVersion("v9", 4)));
        string dir = MakeVersion("v1", 5);
        File.WriteAllText(Path.Combine(dir, "bad name.txt"), "x");
        await Assert.ThrowsAsync<ArgumentException>(() => store.WriteVersionAsync("files", 1, dir));
        string noManifest = MakeVersion("v2", 6);
        File.Delete(Path.Combine(noManifest, StoredFileNames.Manifest));
        await Assert.ThrowsAsync<ArgumentException>(() => store.WriteVersionAsync("files", 1, noManifest));
    }

    [ServiceFact]
    public async Task Listing_follows_the_spec_layout()
    {
        var store = NewStore();
        await store.RegisterAsync("layout/x", MakeAdapter("a", 1), MakeCache("c", 2));
        await store.WriteVersionAsync("layout/x", 1, MakeVersion("v1", 3));
        var names = await ListAsync(store.Blobs, "adapters/layout/x/");
        Assert.Equal(
        [
            "adapters/layout/x/cache/cache.json",
            "adapters/layout/x/cache/shard-00000.ids",
            "adapters/layout/x/cache/shard-00000.safetensors",
            "adapters/layout/x/head.json",
            "adapters/layout/x/versions/000000/adapter_config.json",
            "adapters/layout/x/versions/000000/adapter_model.safetensors",
            "adapters/layout/x/versions/000000/manifest.json",
            "adapters/layout/x/versions/000001/adapter_config.json",
            "adapters/layout/x/versions/000001/adapter_model.safetensors",
            "adapters/layout/x/versions/000001/manifest.json",
        ], names);
        var head = JsonNode.Parse(await ReadTextAsync(store.Blobs, "adapters/layout/x/head.json"))!.AsObject();
        Assert.Equal(["adapterId", "version", "updatedAt"], head.Select(p => p.Key));
        Assert.Equal(2, await store.NextFreeVersionAsync("layout/x"));
    }

    private static async Task<string> ReadTextAsync(IBlobStore blobs, string name)
    {
        using var buffer = new MemoryStream();
        Assert.NotNull(await blobs.DownloadAsync(name, buffer));
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>A blob store whose uploads of some names fail (a writer crashing mid-version).</summary>
    private sealed class BlockingBlobStore(IBlobStore inner, Func<string, bool> block) : IBlobStore
    {
        public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
        public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
        public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
        public Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default) =>
            block(name) ? throw new IOException($"simulated crash before {name}") : inner.UploadAsync(name, content, condition, cancellationToken);
        public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
        // A crashed process deletes nothing (its claim stays behind).
        public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => Task.FromResult(false);
        public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
        public string UriFor(string name) => inner.UriFor(name);
    }

    /// <summary>A clock the test moves by hand.</summary>
    private sealed class ManualClock(DateTimeOffset start) : TimeProvider
    {
        private DateTimeOffset _now = start;

        public override DateTimeOffset GetUtcNow() => _now;

        public void Advance(TimeSpan by) => _now += by;
    }
}

public sealed class FileSystemAdapterStoreTests : AdapterStoreContractTests
{
    protected override IBlobStore CreateBlobStore() => new FileSystemBlobStore(Path.Combine(Temp.Path, "store"));
}

public sealed class AzureAdapterStoreTests : AdapterStoreContractTests
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
