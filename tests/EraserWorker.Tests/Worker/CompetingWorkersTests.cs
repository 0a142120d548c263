using EraserWorker.Contracts;
using EraserWorker.Tests.Infrastructure;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// Two worker processes on one adapter (SPEC §4: several replicas may serve one adapter; the head's ETag makes
/// concurrent updates safe): same virtual host, hence competing consumers of one queue, and the same container.
/// </summary>
public sealed class CompetingWorkersTests(ITestOutputHelper output)
{
    private const int Requests = 30;

    [ServiceFact]
    public async Task Two_workers_on_one_adapter_lose_no_update_and_apply_nothing_twice()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(samples: 40, seed: 15);
        await bed.RegisterAsync(ridge);
        // Started together: both load TorchSharp at the same time.
        var starting = new[] { bed.StartWorkerAsync("worker-1"), bed.StartWorkerAsync("worker-2") };
        await Task.WhenAll(starting);
        var broker = await bed.ConnectBrokerAsync();

        var requests = Enumerable.Range(0, Requests)
            .Select(i => new UnlearningRequested($"race-{i:D2}", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[i]]))
            .ToList();
        // Quickly, in ten bursts of three, so that both replicas keep forming batches while the other is publishing.
        foreach (var burst in requests.Chunk(3))
        {
            await Task.WhenAll(burst.Select(broker.PublishAsync));
            await Task.Delay(120);
        }
        bed.Log($"published {Requests} requests");

        var completed = await broker.WaitCompletedAsync(requests.Select(r => r.RequestId).ToList(), TimeSpan.FromSeconds(120), bed.Diagnostics);
        bed.Log($"all {Requests} completed; versions {string.Join(",", completed.Select(c => c.Version).Distinct().Order())}");
        await broker.CollectForAsync(TimeSpan.FromSeconds(1));
        Assert.Empty(broker.Failed);

        // A linear chain 0..N, each version the child of the one before.
        var versions = await bed.Store.ListVersionsAsync(WorkerTestBed.AdapterId);
        int n = versions[^1];
        Assert.Equal(Enumerable.Range(0, n + 1), versions);
        Assert.Equal(n, (await bed.Store.GetHeadAsync(WorkerTestBed.AdapterId))!.Version);
        var appliedBy = new Dictionary<string, int>(StringComparer.Ordinal);
        var duplicates = new List<string>();
        for (int v = 1; v <= n; v++)
        {
            var manifest = await bed.ManifestAsync(v);
            Assert.Equal(v - 1, manifest.ParentVersion);
            var applied = WorkerTestBed.AppliedRequestIds(manifest);
            Assert.NotEmpty(applied);
            foreach (var id in applied)
                if (!appliedBy.TryAdd(id, v))
                    duplicates.Add($"{id} in versions {appliedBy[id]} and {v}");
        }
        // Every request applied exactly once, in the version its completion names.
        Assert.Empty(duplicates);
        Assert.Equal(requests.Select(r => r.RequestId).Order(StringComparer.Ordinal), appliedBy.Keys.Order(StringComparer.Ordinal));
        foreach (var c in broker.Completed)
            Assert.True(appliedBy[c.RequestId] == c.Version, $"{c.RequestId} completed in version {c.Version}, but version {appliedBy[c.RequestId]} applied it");
        var published = broker.Published;
        Assert.True(published.Select(p => p.Version).Order().SequenceEqual(Enumerable.Range(1, n)),
            $"expected one AdapterVersionPublished per version 1..{n}, got versions [{string.Join(", ", published.Select(p => p.Version).Order())}]\n{bed.Diagnostics()}");

        // Both replicas took part (round-robin delivery), so the head really was contended.
        foreach (var worker in bed.Workers)
            Assert.True(worker.Output.Contains("completed in version", StringComparison.Ordinal), $"{worker.Name} completed nothing.\n{worker.Tail()}");
        bed.Log($"{n} versions; head conflicts logged: {bed.Workers.Sum(w => CountOf(w.Output, "moved under us"))}");

        string dir = await bed.DownloadAsync(n);
        Assert.Equal(completed.First(c => c.Version == n).Sha256, WorkerTestBed.Sha256OfFile(WorkerTestBed.ModelFile(dir)));
        double relative = ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(requests.SelectMany(r => r.SampleIds)), $"head version {n}");
        bed.Log($"head version {n} vs exact retraining: relative error {relative:E2}");
    }

    private static int CountOf(string text, string what)
    {
        int count = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + what.Length, StringComparison.Ordinal))
            count++;
        return count;
    }
}
