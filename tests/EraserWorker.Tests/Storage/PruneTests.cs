using System.Text.Json.Nodes;
using EraserWorker.Storage;
using EraserWorker.Cli.Tests;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Reliability;
using EraserWorker.Tests.Worker;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Storage;

/// <summary>
/// <c>eraser adapters prune</c> (<see cref="AdapterStore.PruneAsync"/>) against what dead writers really leave behind —
/// produced with <see cref="FaultyBlobStore"/> failing a version write midway and its deletes (a killed process cleans
/// nothing up) — on the folder store and on Azurite: it removes partial versions whose claim is gone or expired and whose
/// files are old, and the expired claim of a complete version; it keeps a partial version whose writer's claim is live and
/// one whose files are fresh; it never touches a complete version; <c>--dry-run</c> deletes nothing.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class PruneTests(ITestOutputHelper output) : IDisposable
{
    private const string AdapterId = "tenant-a/prune-bot";
    private readonly TempDirectory _temp = new("eraser-prune");

    public void Dispose() => _temp.Dispose();

    [ServiceTheory]
    [InlineData("FileSystem")]
    [InlineData("AzureBlob")]
    public async Task Prune_removes_dead_writers_leftovers_and_nothing_a_writer_or_reader_needs(string kind)
    {
        AzuriteContainer? container = kind == "AzureBlob" ? AzuriteContainer.Create() : null;
        try
        {
            string root = Path.Combine(_temp.Path, "store");
            IBlobStore Raw() => container is null ? new FileSystemBlobStore(root) : new AzureBlobStore(container.Client);
            var storage = container is null
                ? new JsonObject { ["Kind"] = "FileSystem", ["Root"] = root }
                : new JsonObject { ["Kind"] = "AzureBlob", ["ConnectionString"] = container.ConnectionString, ["Container"] = container.Name };
            // Writers whose claims expire after 1 s; the pruner waits until files are 3 s old.
            storage["VersionClaimTimeout"] = "00:00:03";
            string settings = CliHarness.WriteSettings(_temp.Path, new JsonObject { ["Storage"] = storage });
            StorageOptions Writer(string id, TimeSpan? timeout = null) => new() { WriterId = id, VersionClaimTimeout = timeout ?? TimeSpan.FromSeconds(1) };

            var ridge = new RidgeOracle(seed: 71);
            var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
            var store = new AdapterStore(Raw(), Writer("tests"));
            await store.RegisterAsync(AdapterId, adapter, cache);

            // v1: a writer killed after uploading its model (claim and both files left; below the head once v2 is published).
            await Assert.ThrowsAsync<IOException>(() => new AdapterStore(
                new FaultyBlobStore(Raw(), "versions/000001/adapter_model.safetensors", 1, FaultTiming.AfterWrite, failDeletes: true), Writer("dead-1"))
                .WriteVersionAsync(AdapterId, 1, VersionFolder(adapter, 1)));
            // v2: complete and published, but its writer died before deleting its claim.
            await new AdapterStore(new FaultyBlobStore(Raw(), "no-such-blob", failDeletes: true), Writer("dead-2"))
                .WriteVersionAsync(AdapterId, 2, VersionFolder(adapter, 2));
            Assert.True(await store.TryAdvanceHeadAsync(AdapterId, 2, (await store.GetHeadAsync(AdapterId))!.ETag));
            // v4: a writer killed right after taking its claim (only the claim is left).
            await Assert.ThrowsAsync<IOException>(() => new AdapterStore(
                new FaultyBlobStore(Raw(), "versions/000004/adapter_config.json", failDeletes: true), Writer("dead-4"))
                .WriteVersionAsync(AdapterId, 4, VersionFolder(adapter, 4)));
            await Task.Delay(TimeSpan.FromSeconds(3.5)); // the claims above expire, the files age past the pruner's 3 s

            // v3: a writer that is (as far as anyone can tell) still writing: its claim is live for an hour.
            await Assert.ThrowsAsync<IOException>(() => new AdapterStore(
                new FaultyBlobStore(Raw(), "versions/000003/adapter_model.safetensors", 1, FaultTiming.AfterWrite, failDeletes: true), Writer("live-3", TimeSpan.FromHours(1)))
                .WriteVersionAsync(AdapterId, 3, VersionFolder(adapter, 3)));
            // v5: a write that failed just now and released its claim (its retry may come any moment): files too fresh.
            await Assert.ThrowsAsync<IOException>(() => new AdapterStore(
                new FaultyBlobStore(Raw(), "versions/000005/adapter_model.safetensors", 1, FaultTiming.AfterWrite), Writer("fresh-5"))
                .WriteVersionAsync(AdapterId, 5, VersionFolder(adapter, 5)));

            var before = await BlobsAsync(store);
            var dry = CliHarness.Run("adapters", "prune", "--id", AdapterId, "--dry-run", "--json", "--config", settings);
            Assert.True(dry.Exit == 0, dry.ToString());
            output.WriteLine(dry.Out);
            var report = JsonNode.Parse(dry.Out)!;
            Assert.Equal(2, (int)report["head"]!);
            Assert.True((bool)report["dryRun"]!);
            Assert.Equal(new[] { "1 partial version", "2 stale claim", "4 partial version" }, Entries(report["removed"]));
            Assert.Equal(new[] { "3 partial version", "5 partial version" }, Entries(report["kept"]));
            Assert.Equal(before, await BlobsAsync(store));

            var run = CliHarness.Run("adapters", "prune", "--id", AdapterId, "--config", settings);
            Assert.True(run.Exit == 0, run.ToString());
            output.WriteLine(run.Out);
            Assert.Contains($"{AdapterId}: head 2; 3 leftover(s) removed, 2 kept", run.Out);
            var after = await BlobsAsync(store);
            string prefix = BlobLayout.Adapter(AdapterId);
            var gone = before.Except(after).Select(b => b[prefix.Length..]).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(new[]
            {
                "claims/000001.json", "claims/000002.json", "claims/000004.json",
                "versions/000001/adapter_config.json", "versions/000001/adapter_model.safetensors",
            }, gone);
            Assert.Empty(after.Except(before));
            Assert.Contains(prefix + "claims/000003.json", after);
            Assert.Contains(prefix + "versions/000003/adapter_model.safetensors", after);
            Assert.Contains(prefix + "versions/000005/adapter_model.safetensors", after);

            // Readers and writers go on: the head, its version and the base are intact; v1 can be written afresh.
            Assert.Equal(new[] { 0, 2 }, await store.ListVersionsAsync(AdapterId));
            Assert.Equal(2, (await store.GetHeadAsync(AdapterId))!.Version);
            await store.DownloadVersionAsync(AdapterId, 2, _temp.Sub("v2"));
            await store.DownloadVersionAsync(AdapterId, 0, _temp.Sub("v0"));
            await store.WriteVersionAsync(AdapterId, 1, VersionFolder(adapter, 1, "again"));
            Assert.Equal(new[] { 0, 1, 2 }, await store.ListVersionsAsync(AdapterId));

            // Run again once v5 has aged: it goes too; v3's live claim still protects it.
            await Task.Delay(TimeSpan.FromSeconds(3.2));
            var again = await new AdapterStore(Raw(), Writer("pruner", TimeSpan.FromSeconds(3))).PruneAsync(AdapterId);
            Assert.Equal(new[] { 5 }, again.Removed.Select(e => e.Version));
            Assert.Equal(new[] { 3 }, again.Kept.Select(e => e.Version));
            Assert.Contains("live-3", again.Kept[0].Reason);
        }
        finally
        {
            if (container is not null)
                await container.DisposeAsync();
        }
    }

    private static List<string> Entries(JsonNode? array) =>
        array!.AsArray().Select(e => $"{(int)e!["version"]!} {(string)e["what"]!}").ToList();

    private static async Task<List<string>> BlobsAsync(AdapterStore store)
    {
        var names = new List<string>();
        await foreach (var name in store.Blobs.ListAsync(BlobLayout.Adapter(AdapterId)))
            names.Add(name);
        return names;
    }

    /// <summary>A version folder as the worker writes it: the adapter's files and a manifest listing their hashes.</summary>
    private string VersionFolder(string adapterDir, int version, string marker = "")
    {
        string dir = _temp.Sub($"v{version}-{marker}-{Guid.NewGuid():N}");
        foreach (var file in Directory.GetFiles(adapterDir))
            File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        var files = new JsonObject();
        foreach (var file in Directory.GetFiles(dir))
            files[Path.GetFileName(file)] = new JsonObject { ["sha256"] = WorkerTestBed.Sha256OfFile(file) };
        File.WriteAllText(Path.Combine(dir, StoredFileNames.Manifest), new JsonObject
        {
            ["format"] = "eraser.manifest/v1",
            ["version"] = version,
            ["parentVersion"] = 0,
            ["requests"] = new JsonArray(new JsonObject { ["requestId"] = $"r-{version}{marker}" }),
            ["files"] = files,
        }.ToJsonString());
        return dir;
    }
}
