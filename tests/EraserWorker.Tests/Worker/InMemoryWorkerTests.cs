using EraserWorker.Components.Warm;
using System.Diagnostics;
using EraserWorker.Contracts;
using EraserWorker.Demo;
using EraserWorker.Hosting;
using EraserWorker.Components.Messaging;
using EraserWorker.Messaging;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using MassTransit;
using MassTransit.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// The worker's consumer in process, on its embedded defaults — the in-memory transport and the folder store
/// (<see cref="FileSystemBlobStore"/> in a temporary folder) — composed exactly as Program.cs does
/// (<see cref="EraserWorkerExtensions.AddEraserWorker"/>), with MassTransit's test harness in place of the bus
/// (<c>AddMassTransitTestHarness</c> replaces the worker's registration; the consumer, its definition and the SPEC
/// topology are registered again the same way). No broker, no Azurite.
/// </summary>
public sealed class InMemoryWorkerTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>The harness's message lists wait for more messages (until inactivity) unless the token is already
    /// cancelled: then they return what arrived so far.</summary>
    private static readonly CancellationToken Snapshot = new(canceled: true);
    private const string AdapterId = WorkerTestBed.AdapterId;

    private readonly TempDirectory _temp = new("eraser-inmemory-worker");

    public void Dispose() => _temp.Dispose();

    private string StoreRoot => Path.Combine(_temp.Path, "store");

    private AdapterStore TestStore() => new(new FileSystemBlobStore(StoreRoot), new StorageOptions { WriterId = "tests" });

    private async Task RegisterAsync(RidgeOracle ridge)
    {
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source-" + Guid.NewGuid().ToString("N")[..8]));
        await TestStore().RegisterAsync(AdapterId, adapter, cache);
    }

    /// <summary>The worker's host (WebApplication + AddEraserWorker) on embedded defaults, with the test harness as
    /// its bus; <paramref name="services"/> may register things first (e.g. a decorated blob store).</summary>
    private async Task<WebApplication> StartHostAsync(Action<IServiceCollection>? services = null, TimeSpan? batchTimeLimit = null,
        bool harness = true, IReadOnlyDictionary<string, string?>? settings = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _temp.Path, EnvironmentName = "Production" });
        var configuration = new Dictionary<string, string?>
        {
            // Only what must differ from the defaults: where the folder store and the work folder are, any free port.
            ["Eraser:Storage:Root"] = StoreRoot,
            ["Eraser:Worker:WorkDirectory"] = _temp.Sub("work-" + Guid.NewGuid().ToString("N")[..8]),
            ["Eraser:Http:Port"] = "0",
            ["Eraser:Worker:BatchTimeLimit"] = (batchTimeLimit ?? TimeSpan.FromMilliseconds(500)).ToString("c"),
            ["Eraser:Compute:Device"] = "cpu",
        };
        foreach (var (k, v) in settings ?? new Dictionary<string, string?>())
            configuration[k] = v;
        builder.Configuration.AddInMemoryCollection(configuration);
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(new TestOutputLoggerProvider(output));
        services?.Invoke(builder.Services);
        builder.AddEraserWorker();
        if (harness)
        {
            builder.Services.AddWorkerTestHarness();
        }
        var app = builder.Build();
        app.MapEraserEndpoints();
        await app.StartAsync();
        return app;
    }

    private static async Task<List<T>> WaitPublishedAsync<T>(ITestHarness harness, Func<T, bool> filter, int count, string what) where T : class
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var found = harness.Published.Select<T>(Snapshot).Select(m => m.Context.Message).Where(filter).ToList();
            if (found.Count >= count)
                return found;
            if (watch.Elapsed > Timeout)
            {
                var all = harness.Published.Select(_ => true, Snapshot).Select(m => $"{m.MessageType.Name}: {System.Text.Json.JsonSerializer.Serialize(m.MessageObject)}");
                Assert.Fail($"Timed out after {Timeout.TotalSeconds:F0} s waiting for {what}: {found.Count} of {count}.\nPublished so far:\n  {string.Join("\n  ", all)}");
            }
            await Task.Delay(50);
        }
    }

    private static Task<List<UnlearningCompleted>> WaitCompletedAsync(ITestHarness harness, string requestId, int count = 1) =>
        WaitPublishedAsync<UnlearningCompleted>(harness, c => c.RequestId == requestId, count, $"UnlearningCompleted of {requestId}");

    private static void AssertNoFaults(ITestHarness harness) =>
        Assert.False(harness.Published.Select<Fault>(Snapshot).Any(), "the consumer faulted: " +
            string.Join("; ", harness.Published.Select<Fault>(Snapshot).Select(f => string.Join(", ", f.Context.Message.Exceptions.Select(e => e.Message)))));

    [Fact]
    public async Task Batch_with_good_and_bad_requests_completes_the_good_ones_exactly_and_fails_each_bad_one_alone()
    {
        var ridge = new RidgeOracle(seed: 21);
        await RegisterAsync(ridge);
        await using var app = await StartHostAsync(batchTimeLimit: TimeSpan.FromSeconds(1));
        var harness = app.Services.GetRequiredService<ITestHarness>();
        string missingSet = RequestValidation.FormatReplacementsUri(AdapterId, "r-does-not-exist");

        UnlearningRequested[] good =
        [
            new("good-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[0], ridge.Ids[3]]),
            new("good-2", AdapterId, UnlearningTasks.Remove, [ridge.Ids[9]]),
        ];
        (UnlearningRequested Request, string Code)[] bad =
        [
            (new("bad-unknown-sample", AdapterId, UnlearningTasks.Remove, ["no-such-sample"]), FailureCodes.UnknownSample),
            (new("bad-adapter-id", "../etc", UnlearningTasks.Remove, [ridge.Ids[1]]), FailureCodes.InvalidRequest),
            (new("bad-unknown-adapter", "tenant-b/ghost", UnlearningTasks.Remove, [ridge.Ids[1]]), FailureCodes.UnknownAdapter),
            (new("bad-no-replacements", AdapterId, UnlearningTasks.CorrectResponse, [ridge.Ids[2]]), FailureCodes.InvalidRequest),
            (new("bad-missing-set", AdapterId, UnlearningTasks.ModifyQuery, [ridge.Ids[2]], missingSet), FailureCodes.ReplacementMissing),
        ];
        await harness.Bus.Publish(good[0]);
        foreach (var (request, _) in bad)
            await harness.Bus.Publish(request);
        await harness.Bus.Publish(good[1]);

        foreach (var (request, code) in bad)
        {
            var failure = (await WaitPublishedAsync<UnlearningFailed>(harness, f => f.RequestId == request.RequestId, 1, $"UnlearningFailed of {request.RequestId}")).Single();
            Assert.True(code == failure.Code, $"{request.RequestId}: expected {code}, got {failure.Code} ({failure.Message})");
            Assert.Equal(request.AdapterId, failure.AdapterId);
        }
        var completed = new List<UnlearningCompleted>();
        foreach (var request in good)
            completed.AddRange(await WaitCompletedAsync(harness, request.RequestId));
        Assert.All(completed, c => Assert.Equal(1, c.Version));
        var version = (await WaitPublishedAsync<AdapterVersionPublished>(harness, _ => true, 1, "AdapterVersionPublished")).Single();
        Assert.Equal(new[] { "good-1", "good-2" }, version.RequestIds.Order(StringComparer.Ordinal));
        Assert.Equal(completed[0].Sha256, version.Sha256);
        Assert.StartsWith("file:", version.AdapterUri, StringComparison.Ordinal);

        // The consumer saw batches (not single messages) and never faulted.
        Assert.True(await harness.GetConsumerHarness<UnlearningRequestedConsumer>().Consumed.Any<Batch<UnlearningRequested>>());
        AssertNoFaults(harness);

        var store = TestStore();
        Assert.Equal(new[] { 0, 1 }, await store.ListVersionsAsync(AdapterId));
        string dir = Path.Combine(_temp.Path, "v1");
        var downloaded = await store.DownloadVersionAsync(AdapterId, 1, dir);
        Assert.Equal(completed[0].Sha256, downloaded.Sha256);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(good.SelectMany(g => g.SampleIds)), "version 1");
    }

    [Fact]
    public async Task An_adapter_whose_solve_does_not_converge_fails_alone_and_the_other_adapter_in_the_batch_completes()
    {
        // The worker runs cg with at most 40 iterations: enough for the well-conditioned adapter (P = 20), far too few for
        // the ill-conditioned one (P = 80, l2 = 1/1024: it needs ~70). Its requests must fail with NumericalFailure and
        // write no version; the other adapter's request, in the same batch, completes exactly.
        const string good = "tenant-a/converges", bad = "tenant-b/ill-conditioned";
        var easy = new RidgeOracle(seed: 31);
        var hard = new RidgeOracle(samples: 60, rank: 4, inFeatures: 12, outFeatures: 8, seed: 3, l2: 1.0 / 1024);
        foreach (var (id, ridge) in new[] { (good, easy), (bad, hard) })
        {
            var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source-" + id.Replace('/', '-')));
            await TestStore().RegisterAsync(id, adapter, cache);
        }
        await using var app = await StartHostAsync(batchTimeLimit: TimeSpan.FromSeconds(1), settings: new Dictionary<string, string?>
        {
            ["Eraser:Worker:Solver"] = "Cg",
            ["Eraser:Worker:MaxIterations"] = "40",
        });
        var harness = app.Services.GetRequiredService<ITestHarness>();
        var rejected = app.Services.GetRequiredService<EraserWorker.Components.Observability.EraserMetrics>().SolvesRejected.WithLabels("cg");
        double rejectedBefore = rejected.Value;

        await harness.Bus.Publish(new UnlearningRequested("hard-1", bad, UnlearningTasks.Remove, [hard.Ids[1]]));
        await harness.Bus.Publish(new UnlearningRequested("easy-1", good, UnlearningTasks.Remove, [easy.Ids[2], easy.Ids[5]]));
        await harness.Bus.Publish(new UnlearningRequested("hard-2", bad, UnlearningTasks.Remove, [hard.Ids[7]]));

        foreach (var id in new[] { "hard-1", "hard-2" })
        {
            var failure = (await WaitPublishedAsync<UnlearningFailed>(harness, f => f.RequestId == id, 1, $"UnlearningFailed of {id}")).Single();
            Assert.Equal(FailureCodes.NumericalFailure, failure.Code);
            Assert.Contains("above the tolerance 1E-06", failure.Message);
        }
        var completed = (await WaitCompletedAsync(harness, "easy-1")).Single();
        Assert.Equal(1, completed.Version);
        Assert.True(completed.Solver.RelativeResidual <= 1e-6);
        AssertNoFaults(harness);

        var store = TestStore();
        Assert.Equal(new[] { 0 }, await store.ListVersionsAsync(bad));
        Assert.Equal(0, (await store.GetHeadAsync(bad))!.Version);
        string dir = Path.Combine(_temp.Path, "easy-v1");
        await store.DownloadVersionAsync(good, 1, dir);
        easy.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), easy.Retrain([easy.Ids[2], easy.Ids[5]]), "version 1 of the converging adapter");
        Assert.True(rejected.Value >= rejectedBefore + 1, "eraser_solves_rejected_total{solver=\"cg\"} counts the refused solve");
        Assert.DoesNotContain(harness.Published.Select<AdapterVersionPublished>(Snapshot), v => v.Context.Message.AdapterId == bad);
    }

    [Fact]
    public async Task Requests_whose_batch_keeps_failing_are_answered_after_the_last_retry_not_left_waiting()
    {
        // Reading one adapter's head keeps failing: with an IOException (storage trouble, transient) for one adapter and with
        // a NullReferenceException (a bug) for another. After Eraser:Worker:Retries retries the requests are answered —
        // RetriesExhausted and InternalError — and nothing is written; a healthy adapter's request in the same batch completes
        // exactly once.
        var ridge = new RidgeOracle(seed: 24);
        foreach (var id in new[] { "tenant-a/flaky", "tenant-a/buggy", AdapterId })
        {
            var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source-" + id.Replace('/', '-')));
            await TestStore().RegisterAsync(id, adapter, cache);
        }
        var failing = new FailingReadsBlobStore(new FileSystemBlobStore(StoreRoot), new Dictionary<string, Func<Exception>>
        {
            [BlobLayout.Head("tenant-a/flaky")] = () => new IOException("the disk is gone"),
            [BlobLayout.Head("tenant-a/buggy")] = () => new NullReferenceException("a bug"),
        });
        await using var app = await StartHostAsync(services => services.AddSingleton<IBlobStore>(failing), settings: new Dictionary<string, string?>
        {
            ["Eraser:Worker:Retries"] = "2",
            ["Eraser:Worker:RetryMaxInterval"] = "00:00:00.050",
        });
        var harness = app.Services.GetRequiredService<ITestHarness>();
        failing.Armed = true;

        // One batch with a failing and a healthy adapter: the healthy one is applied once, the other answered at the end.
        await harness.Bus.Publish(new UnlearningRequested("flaky-1", "tenant-a/flaky", UnlearningTasks.Remove, [ridge.Ids[1]]));
        await harness.Bus.Publish(new UnlearningRequested("healthy-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[1]]));
        var exhausted = (await WaitPublishedAsync<UnlearningFailed>(harness, f => f.RequestId == "flaky-1", 1, "the failure of flaky-1")).Single();
        var healthy = (await WaitCompletedAsync(harness, "healthy-1")).Single();
        await harness.Bus.Publish(new UnlearningRequested("buggy-1", "tenant-a/buggy", UnlearningTasks.Remove, [ridge.Ids[1]]));
        var internalError = (await WaitPublishedAsync<UnlearningFailed>(harness, f => f.RequestId == "buggy-1", 1, "the failure of buggy-1")).Single();

        Assert.Equal(FailureCodes.RetriesExhausted, exhausted.Code);
        Assert.Contains("the disk is gone", exhausted.Message);
        Assert.Contains("resubmit later", exhausted.Message);
        Assert.Equal(FailureCodes.InternalError, internalError.Code);
        Assert.Equal(1, healthy.Version);
        Assert.Single(harness.Published.Select<UnlearningCompleted>(Snapshot), c => c.Context.Message.RequestId == "healthy-1");
        Assert.Equal(new[] { 0, 1 }, await TestStore().ListVersionsAsync(AdapterId));
        Assert.True(failing.Failures >= 2 * 3, $"each batch is tried 1 + 2 times; reads failed {failing.Failures} times");
        failing.Armed = false;
        Assert.Equal(new[] { 0 }, await TestStore().ListVersionsAsync("tenant-a/flaky"));
        Assert.Equal(new[] { 0 }, await TestStore().ListVersionsAsync("tenant-a/buggy"));
    }

    [Fact]
    public async Task The_gram_a_worker_builds_is_kept_in_the_store_and_a_later_worker_loads_it_instead_of_rebuilding()
    {
        var ridge = new RidgeOracle(seed: 25);
        await RegisterAsync(ridge);
        string kept = Path.Combine(StoreRoot, BlobLayout.CacheDerived(AdapterId).TrimEnd('/'), "gram.safetensors");
        await using (var first = await StartHostAsync())
        {
            var warm = (await first.Services.GetRequiredService<WarmEngines>().GetAsync(AdapterId, CancellationToken.None))!;
            Assert.StartsWith("built", warm.Engine.GramStatus);
            Assert.True(File.Exists(kept), $"the Gram was not kept in the store ({warm.Engine.GramStatus})");
        }

        await using var second = await StartHostAsync();
        var harness = second.Services.GetRequiredService<ITestHarness>();
        await harness.Bus.Publish(new UnlearningRequested("after-restart-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[6]]));
        var completed = (await WaitCompletedAsync(harness, "after-restart-1")).Single();
        var reloaded = (await second.Services.GetRequiredService<WarmEngines>().GetAsync(AdapterId, CancellationToken.None))!;
        Assert.StartsWith("loaded from", reloaded.Engine.GramStatus);
        string dir = Path.Combine(_temp.Path, "gram-v1");
        await TestStore().DownloadVersionAsync(AdapterId, completed.Version, dir);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain([ridge.Ids[6]]), "the version solved with the loaded Gram");
    }

    [Fact]
    public async Task Duplicates_in_one_batch_and_after_completion_are_answered_from_the_history_never_re_applied()
    {
        var ridge = new RidgeOracle(seed: 22);
        await RegisterAsync(ridge);
        await using var app = await StartHostAsync();
        var harness = app.Services.GetRequiredService<ITestHarness>();
        var request = new UnlearningRequested("dup-7", AdapterId, UnlearningTasks.Remove, [ridge.Ids[7]]);

        await harness.Bus.Publish(request);
        await harness.Bus.Publish(request); // the same delivery twice, within one batch window
        var first = (await WaitCompletedAsync(harness, "dup-7")).First();
        Assert.Equal(1, first.Version);
        await Task.Delay(1000);
        int before = harness.Published.Select<UnlearningCompleted>(Snapshot).Count(c => c.Context.Message.RequestId == "dup-7");

        await harness.Bus.Publish(request); // redelivered after completion
        var all = await WaitCompletedAsync(harness, "dup-7", before + 1);
        Assert.All(all, c => Assert.Equal((1, first.AdapterUri, first.Sha256), (c.Version, c.AdapterUri, c.Sha256)));
        await Task.Delay(500);

        AssertNoFaults(harness);
        // Announcements are at least once: the redelivery re-announces version 1 (the worker that applied it might
        // have died before announcing it); every announcement is the same event.
        var announced = harness.Published.Select<AdapterVersionPublished>(Snapshot).Select(p => p.Context.Message).ToList();
        Assert.True(announced.Count >= 2, $"expected version 1 announced on the first application and again on the redelivery, got {announced.Count}");
        Assert.All(announced, v => Assert.Equal((1, first.AdapterUri, first.Sha256, "dup-7"), (v.Version, v.AdapterUri, v.Sha256, Assert.Single(v.RequestIds))));
        Assert.Empty(harness.Published.Select<UnlearningFailed>(Snapshot));
        Assert.Equal(new[] { 0, 1 }, await TestStore().ListVersionsAsync(AdapterId));
    }

    [Fact]
    public async Task A_version_whose_head_another_replica_moved_forward_is_still_announced()
    {
        // Another replica that found our version written but the head not yet moved helps it forward
        // (AdapterUnlearningService.HelpAdvanceAsync); our own If-Match on the head then fails although the head
        // is at our version. The version must be announced all the same (AdapterVersionPublished), exactly once.
        var ridge = new RidgeOracle(seed: 23);
        await RegisterAsync(ridge);
        var helping = new HelpingReplicaBlobStore(new FileSystemBlobStore(StoreRoot));
        await using var app = await StartHostAsync(services => services.AddSingleton<IBlobStore>(helping));
        var harness = app.Services.GetRequiredService<ITestHarness>();

        await harness.Bus.Publish(new UnlearningRequested("helped-1", AdapterId, UnlearningTasks.Remove, [ridge.Ids[4]]));
        var completed = (await WaitCompletedAsync(harness, "helped-1")).Single();
        Assert.True(helping.Helped, "the test did not simulate the other replica");
        Assert.Equal(1, completed.Version);
        var version = (await WaitPublishedAsync<AdapterVersionPublished>(harness, v => v.Version == 1, 1, "AdapterVersionPublished of version 1")).Single();
        Assert.Equal(new[] { "helped-1" }, version.RequestIds);
        await Task.Delay(500);
        Assert.Single(harness.Published.Select<AdapterVersionPublished>(Snapshot));
        Assert.Equal(new[] { 0, 1 }, await TestStore().ListVersionsAsync(AdapterId));
    }

    [Fact]
    public async Task Demo_mode_on_the_embedded_defaults_completes_its_requests()
    {
        // `dotnet run --project src/EraserWorker -- --demo`: in-memory transport, folder store, the demo publisher; no
        // test harness, the worker's own bus. A subscriber connected to the bus sees the events.
        await using var app = await StartHostAsync(harness: false, settings: new Dictionary<string, string?>
        {
            ["Eraser:Demo:Enabled"] = "true",
            ["Eraser:Demo:Requests"] = "5",
            ["Eraser:Demo:Interval"] = "00:00:00.200",
        });
        var bus = app.Services.GetRequiredService<IBus>();
        var completed = new List<UnlearningCompleted>();
        var failed = new List<UnlearningFailed>();
        // Plain JSON carries no message type: one endpoint (queue) per event type, bound to its one exchange.
        var completedEndpoint = bus.ConnectReceiveEndpoint("test-demo-completed", e => e.Handler<UnlearningCompleted>(c =>
        {
            lock (completed)
                completed.Add(c.Message);
            return Task.CompletedTask;
        }));
        var failedEndpoint = bus.ConnectReceiveEndpoint("test-demo-failed", e => e.Handler<UnlearningFailed>(c =>
        {
            lock (failed)
                failed.Add(c.Message);
            return Task.CompletedTask;
        }));
        await completedEndpoint.Ready;
        await failedEndpoint.Ready;
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < Timeout && Count(completed) + Count(failed) < 5)
            await Task.Delay(100);
        await completedEndpoint.StopAsync();
        await failedEndpoint.StopAsync();

        Assert.True(Count(failed) == 0, "demo requests failed: " + string.Join("; ", failed.Select(f => $"{f.Code} {f.Message}")));
        Assert.True(Count(completed) == 5, $"{Count(completed)} of the demo's 5 requests completed within {Timeout.TotalSeconds:F0} s");
        var demo = new DemoOptions().AdapterId;
        var versions = await TestStore().ListVersionsAsync(demo);
        Assert.Equal(Enumerable.Range(0, versions.Count), versions);
        Assert.Equal(completed.Max(c => c.Version), versions[^1]);
        Assert.Contains(completed, c => c.Solver.RelativeResidual < 1e-6);
    }

    private static int Count<T>(List<T> list)
    {
        lock (list)
            return list.Count;
    }

    /// <summary>A store whose downloads of some blobs throw, while <see cref="Armed"/>.</summary>
    private sealed class FailingReadsBlobStore(IBlobStore inner, IReadOnlyDictionary<string, Func<Exception>> failures) : IBlobStore
    {
        private int _failures;

        public bool Armed { get; set; }

        public int Failures => Volatile.Read(ref _failures);

        public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default)
        {
            if (Armed && failures.TryGetValue(name, out var failure))
            {
                Interlocked.Increment(ref _failures);
                throw failure();
            }
            return inner.DownloadAsync(name, destination, cancellationToken);
        }

        public Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default) => inner.UploadAsync(name, content, condition, cancellationToken);
        public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
        public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
        public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
        public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => inner.DeleteAsync(name, cancellationToken);
        public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
        public string UriFor(string name) => inner.UriFor(name);
    }

    /// <summary>Simulates a second replica: before the worker's first conditional update of a head, it makes the very
    /// same update itself (what HelpAdvanceAsync does), so the worker's If-Match fails with the head at its version.</summary>
    private sealed class HelpingReplicaBlobStore(IBlobStore inner) : IBlobStore
    {
        private int _helped;

        public bool Helped => _helped > 0;

        public async Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default)
        {
            if (condition.Kind == BlobConditionKind.IfMatch && name.EndsWith("/head.json", StringComparison.Ordinal) && Interlocked.Exchange(ref _helped, 1) == 0)
            {
                using var copy = new MemoryStream();
                await content.CopyToAsync(copy, cancellationToken);
                byte[] bytes = copy.ToArray();
                await inner.UploadAsync(name, new MemoryStream(bytes), condition, cancellationToken); // the other replica
                return await inner.UploadAsync(name, new MemoryStream(bytes), condition, cancellationToken); // ours: fails now
            }
            return await inner.UploadAsync(name, content, condition, cancellationToken);
        }

        public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
        public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
        public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
        public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
        public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => inner.DeleteAsync(name, cancellationToken);
        public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
        public string UriFor(string name) => inner.UriFor(name);
    }
}
