using System.Diagnostics;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Hosting;
using EraserWorker.Components.Messaging;
using EraserWorker.Messaging;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using MassTransit;
using MassTransit.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// A failure in the middle of writing a version (SPEC §4: a version is written once and never changed; the head moves
/// only to complete versions). Injected with <see cref="FaultyBlobStore"/> at every upload of a version write — the
/// claim, each file, the manifest, the head — before the write and after it (the write happened, its answer was lost),
/// while <see cref="ConcurrentReader"/> keeps reading the adapter. No reader ever sees an incomplete version, and the
/// retry completes it.
/// </summary>
public sealed class MidWriteFailureTests(ITestOutputHelper output) : IDisposable
{
    private const string AdapterId = WorkerTestBed.AdapterId;
    private readonly TempDirectory _temp = new("eraser-mid-write");

    public void Dispose() => _temp.Dispose();

    /// <summary>Storage level: <see cref="AdapterStore.WriteVersionAsync"/> interrupted at each of its uploads, then
    /// retried by the same writer (a retry in the same process) — and, for the remaining claim, by another writer once
    /// the claim has expired (a restarted process).</summary>
    [ServiceTheory]
    [InlineData("FileSystem")]
    [InlineData("AzureBlob")]
    public async Task A_version_write_interrupted_at_each_upload_is_never_visible_and_the_retry_completes_it(string kind)
    {
        AzuriteContainer? container = kind == "AzureBlob" ? AzuriteContainer.Create() : null;
        try
        {
            IBlobStore Raw() => container is null ? new FileSystemBlobStore(Path.Combine(_temp.Path, "store")) : new AzureBlobStore(container.Client);
            var ridge = new RidgeOracle(seed: 61);
            var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
            var steps = new[] { "claims/000001.json", "versions/000001/adapter_config.json", "versions/000001/adapter_model.safetensors", "versions/000001/manifest.json" };
            int caseNo = 0;
            foreach (var step in steps)
            {
                foreach (var timing in new[] { FaultTiming.BeforeWrite, FaultTiming.AfterWrite })
                {
                    string id = $"tenant-a/mid-write-{++caseNo}";
                    var options = new StorageOptions { WriterId = "writer-a", VersionClaimTimeout = TimeSpan.FromSeconds(1) };
                    var clean = new AdapterStore(Raw(), options);
                    await clean.RegisterAsync(id, adapter, cache);
                    string local = VersionFolder(ridge, adapter, $"v1-{caseNo}");
                    var faulty = new FaultyBlobStore(Raw(), step, 1, timing);
                    string what = $"{kind}, fault {timing} {step}";

                    await using (var reader = new ConcurrentReader(new AdapterStore(Raw()), id, _temp.Sub($"reader-{caseNo}")))
                    {
                        var error = await Record.ExceptionAsync(() => new AdapterStore(faulty, options).WriteVersionAsync(id, 1, local));
                        Assert.True(faulty.Injected, $"{what}: the fault was not injected; uploads: {string.Join(", ", faulty.Uploads)}");
                        Assert.IsType<IOException>(error);
                        bool manifestWritten = step.EndsWith("manifest.json", StringComparison.Ordinal) && timing == FaultTiming.AfterWrite;
                        Assert.Equal(manifestWritten ? new[] { 0, 1 } : new[] { 0 }, await clean.ListVersionsAsync(id));
                        Assert.Equal(0, (await clean.GetHeadAsync(id))!.Version);

                        // The retry: the same writer (a retry in the same process) completes the version.
                        var retry = await Record.ExceptionAsync(() => new AdapterStore(Raw(), options).WriteVersionAsync(id, 1, local));
                        if (manifestWritten)
                            Assert.IsType<VersionExistsException>(retry); // it was complete already; the worker moves the head (HelpAdvance)
                        else
                            Assert.Null(retry);
                        var head = (await clean.GetHeadAsync(id))!;
                        Assert.True(await clean.TryAdvanceHeadAsync(id, 1, head.ETag), what);
                        // At least one complete reading pass after the head moved (a loaded machine may need a while).
                        Assert.True(await reader.WaitForPassesAsync(reader.Reads + 1, TimeSpan.FromSeconds(20)), $"{what}: the reader made no complete pass");
                        Assert.True(reader.Violations.Count == 0, $"{what}: a reader saw: {string.Join("; ", reader.Violations.Distinct())}");
                    }
                    var v1 = Path.Combine(_temp.Path, $"check-{caseNo}");
                    await clean.DownloadVersionAsync(id, 1, v1); // hashes verified against the manifest
                    Assert.Equal(File.ReadAllBytes(Path.Combine(local, StoredFileNames.AdapterWeights)), File.ReadAllBytes(WorkerTestBed.ModelFile(v1)));
                    Assert.Empty(await Claims(clean, id));
                    output.WriteLine($"{what}: uploads {string.Join(" → ", faulty.Uploads.Select(u => u[(u.IndexOf("/0", StringComparison.Ordinal) + 1)..]))}; retried OK");
                }
            }

            // A writer killed mid-write (its claim left behind) and a restarted process, i.e. another writer: refused
            // while the claim is live, then it takes the claim over once it has expired and completes the version.
            {
                string id = "tenant-a/mid-write-takeover";
                var optionsA = new StorageOptions { WriterId = "writer-a", VersionClaimTimeout = TimeSpan.FromSeconds(2) };
                var optionsB = new StorageOptions { WriterId = "writer-b", VersionClaimTimeout = TimeSpan.FromSeconds(2) };
                var clean = new AdapterStore(Raw(), optionsA);
                await clean.RegisterAsync(id, adapter, cache);
                string local = VersionFolder(ridge, adapter, "v1-takeover");
                var faulty = new FaultyBlobStore(Raw(), "versions/000001/adapter_model.safetensors", failDeletes: true);
                await Assert.ThrowsAsync<IOException>(() => new AdapterStore(faulty, optionsA).WriteVersionAsync(id, 1, local));
                Assert.Single(await Claims(clean, id));
                string otherFiles = VersionFolder(ridge, adapter, "v1-other", marker: "writer-b");
                await Assert.ThrowsAsync<VersionConflictException>(() => new AdapterStore(Raw(), optionsB).WriteVersionAsync(id, 1, otherFiles));
                await Task.Delay(TimeSpan.FromSeconds(2.2));
                await new AdapterStore(Raw(), optionsB).WriteVersionAsync(id, 1, otherFiles);
                var manifest = await clean.ReadManifestJsonAsync(id, 1);
                Assert.Equal("writer-b", (string?)manifest!["marker"]);
                Assert.Empty(await Claims(clean, id));
            }
        }
        finally
        {
            if (container is not null)
                await container.DisposeAsync();
        }
    }

    /// <summary>Worker level, in process (in-memory transport, folder store): the consumer's write of version 1 fails
    /// at one upload, before or after the write; MassTransit's retry redoes the batch, which completes the version (same
    /// writer: it takes its own claim over and replaces its leftovers), moves the head that another attempt left behind,
    /// or finds the request applied. One completion, in version 1; the reader never saw an incomplete version.</summary>
    [Theory]
    [InlineData("claims/000001.json", FaultTiming.BeforeWrite)]
    [InlineData("versions/000001/adapter_model.safetensors", FaultTiming.BeforeWrite)]
    [InlineData("versions/000001/adapter_model.safetensors", FaultTiming.AfterWrite)]
    [InlineData("versions/000001/manifest.json", FaultTiming.BeforeWrite)]
    [InlineData("versions/000001/manifest.json", FaultTiming.AfterWrite)]
    [InlineData("head.json", FaultTiming.AfterWrite)]
    public async Task The_worker_retries_a_version_write_that_failed_midway_and_completes_it_once(string step, FaultTiming timing)
    {
        var ridge = new RidgeOracle(seed: 62);
        string root = Path.Combine(_temp.Path, "store");
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
        await new AdapterStore(new FileSystemBlobStore(root)).RegisterAsync(AdapterId, adapter, cache);
        // Only the worker's own head update (If-Match) is faulted, not the registration's create.
        var faulty = new FaultyBlobStore(new FileSystemBlobStore(root), step, 1, timing);

        await using var reader = new ConcurrentReader(new AdapterStore(new FileSystemBlobStore(root)), AdapterId, _temp.Sub("reader"));
        await using var app = await StartInProcessWorkerAsync(root, faulty);
        var harness = app.Services.GetRequiredService<ITestHarness>();
        await harness.Bus.Publish(new UnlearningRequested("mid-write-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[3], ridge.Ids[8]]));

        var watch = Stopwatch.StartNew();
        List<UnlearningCompleted> completed;
        while ((completed = harness.Published.Select<UnlearningCompleted>(new CancellationToken(true)).Select(m => m.Context.Message).ToList()).Count == 0)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), $"no completion after 60 s; uploads: {string.Join(", ", faulty.Uploads)}");
            await Task.Delay(50);
        }
        await Task.Delay(500);
        Assert.True(faulty.Injected, "the fault was not injected; uploads: " + string.Join(", ", faulty.Uploads));
        Assert.Empty(harness.Published.Select<UnlearningFailed>(new CancellationToken(true)));
        Assert.All(harness.Published.Select<UnlearningCompleted>(new CancellationToken(true)), c => Assert.Equal(1, c.Context.Message.Version));
        // Version 1 is announced, also when the attempt that moved the head failed before publishing (head.json, after the
        // write): the retry finds the request applied and announces its version again (at least once).
        var announced = harness.Published.Select<AdapterVersionPublished>(new CancellationToken(true)).Select(m => m.Context.Message).ToList();
        Assert.True(announced.Count >= 1, "version 1 was never announced; uploads: " + string.Join(", ", faulty.Uploads));
        Assert.All(announced, v => Assert.Equal((1, completed[0].Sha256, "mid-write-1"), (v.Version, v.Sha256, Assert.Single(v.RequestIds))));
        var store = new AdapterStore(new FileSystemBlobStore(root));
        Assert.Equal(new[] { 0, 1 }, await store.ListVersionsAsync(AdapterId));
        Assert.Equal(1, (await store.GetHeadAsync(AdapterId))!.Version);
        Assert.Empty(await Claims(store, AdapterId));
        Assert.True(reader.Violations.Count == 0, "a reader saw: " + string.Join("; ", reader.Violations.Distinct()));
        string dir = Path.Combine(_temp.Path, "v1");
        await store.DownloadVersionAsync(AdapterId, 1, dir);
        Assert.Equal(completed[0].Sha256, WorkerTestBed.Sha256OfFile(WorkerTestBed.ModelFile(dir)));
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain([ridge.Ids[3], ridge.Ids[8]]), "version 1");
        output.WriteLine($"uploads: {string.Join(" → ", faulty.Uploads)}; reader passes {reader.Reads}");
    }

    /// <summary>A worker that dies between moving the head and publishing: the first host applies the request (the head
    /// moves to version 1) and is stopped without publishing anything, as a kill at that moment leaves it — the request
    /// unacknowledged, no event. The broker redelivers the request to the next worker (a fresh host on the same store):
    /// it answers from the history, never re-applies, and announces version 1 — the announcement the dead worker lost.</summary>
    [Fact]
    public async Task A_version_announcement_lost_between_head_move_and_publish_arrives_on_redelivery_after_restart()
    {
        var ridge = new RidgeOracle(seed: 63);
        string root = Path.Combine(_temp.Path, "store");
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
        var store = new AdapterStore(new FileSystemBlobStore(root));
        await store.RegisterAsync(AdapterId, adapter, cache);
        var request = new UnlearningRequested("lost-announcement-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[2], ridge.Ids[5]]);

        BatchOutcomeSummary dead;
        await using (var first = await StartInProcessWorkerAsync(root, new FileSystemBlobStore(root)))
        {
            // What the consumer does up to the head move; the process "dies" before publishing the outcome.
            var outcome = await first.Services.GetRequiredService<EraserWorker.Components.Unlearning.UnlearningBatchService>()
                .ApplyAsync([new EraserWorker.Components.Unlearning.PendingRequest(request, DateTimeOffset.UtcNow)], lastAttempt: false, CancellationToken.None);
            var published = Assert.Single(outcome.Published);
            dead = new BatchOutcomeSummary(published.Version, published.Sha256);
            Assert.Empty(first.Services.GetRequiredService<ITestHarness>().Published.Select<AdapterVersionPublished>(new CancellationToken(true)));
        }
        Assert.Equal(1, dead.Version);
        Assert.Equal(1, (await store.GetHeadAsync(AdapterId))!.Version);

        await using var second = await StartInProcessWorkerAsync(root, new FileSystemBlobStore(root), _temp.Sub("work-2"));
        var harness = second.Services.GetRequiredService<ITestHarness>();
        await harness.Bus.Publish(request); // the redelivery of the unacknowledged request
        var watch = Stopwatch.StartNew();
        List<AdapterVersionPublished> announced;
        while ((announced = harness.Published.Select<AdapterVersionPublished>(new CancellationToken(true)).Select(m => m.Context.Message).ToList()).Count == 0
               || !harness.Published.Select<UnlearningCompleted>(new CancellationToken(true)).Any())
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), "version 1 was not announced (and the request answered) within 30 s of the redelivery");
            await Task.Delay(50);
        }
        await Task.Delay(300);
        var version = Assert.Single(announced);
        Assert.Equal((AdapterId, 1, dead.Sha256), (version.AdapterId, version.Version, version.Sha256));
        Assert.Equal(new[] { request.RequestId }, version.RequestIds);
        Assert.EndsWith("/versions/000001/", version.AdapterUri, StringComparison.Ordinal);
        var completed = Assert.Single(harness.Published.Select<UnlearningCompleted>(new CancellationToken(true)).Select(m => m.Context.Message));
        Assert.Equal((1, dead.Sha256), (completed.Version, completed.Sha256));
        Assert.Equal(new[] { 0, 1 }, await store.ListVersionsAsync(AdapterId)); // answered from the history, not re-applied
        output.WriteLine($"announced after {watch.Elapsed.TotalSeconds:F1} s: {System.Text.Json.JsonSerializer.Serialize(version)}");
    }

    private sealed record BatchOutcomeSummary(int Version, string Sha256);

    /// <summary>The worker composed as Program.cs does, on the folder store, with <paramref name="blobs"/> as its
    /// <see cref="IBlobStore"/> and MassTransit's test harness as the bus.</summary>
    private async Task<WebApplication> StartInProcessWorkerAsync(string root, IBlobStore blobs, string? workDirectory = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _temp.Path, EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Eraser:Storage:Root"] = root,
            ["Eraser:Worker:WorkDirectory"] = workDirectory ?? _temp.Sub("work"),
            ["Eraser:Http:Port"] = "0",
            ["Eraser:Worker:BatchTimeLimit"] = "00:00:00.200",
            ["Eraser:Compute:Device"] = "cpu",
        });
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(new TestOutputLoggerProvider(output));
        builder.Services.AddSingleton(blobs);
        builder.AddEraserWorker();
        builder.Services.AddWorkerTestHarness();
        var app = builder.Build();
        app.MapEraserEndpoints();
        await app.StartAsync();
        return app;
    }

    /// <summary>A version-1 folder as the worker writes it: the adapter's files and a manifest listing their hashes.</summary>
    private string VersionFolder(RidgeOracle ridge, string adapterDir, string name, string? marker = null)
    {
        string dir = _temp.Sub(name);
        foreach (var file in Directory.GetFiles(adapterDir))
            File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        // Different bytes per writer: a takeover must not be mistaken for the same write.
        if (marker is not null)
            File.AppendAllText(Path.Combine(dir, StoredFileNames.AdapterConfig), "\n");
        var files = new JsonObject();
        foreach (var file in Directory.GetFiles(dir))
            files[Path.GetFileName(file)] = new JsonObject { ["sha256"] = WorkerTestBed.Sha256OfFile(file) };
        var manifest = new JsonObject
        {
            ["format"] = "eraser.manifest/v1",
            ["version"] = 1,
            ["parentVersion"] = 0,
            ["requests"] = new JsonArray(new JsonObject { ["requestId"] = "r-" + name }),
            ["marker"] = marker ?? "writer-a",
            ["files"] = files,
            ["p"] = ridge.P,
        };
        File.WriteAllText(Path.Combine(dir, StoredFileNames.Manifest), manifest.ToJsonString());
        return dir;
    }

    private static async Task<List<string>> Claims(AdapterStore store, string adapterId)
    {
        var claims = new List<string>();
        await foreach (var name in store.Blobs.ListAsync(BlobLayout.Adapter(adapterId) + "claims/"))
            claims.Add(name);
        return claims;
    }
}
